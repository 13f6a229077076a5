// Command natsd is nats-server built from the Go module the repository
// already depends on, so a JetStream cluster runs locally without a separate
// download (`make stack`, test/e2e). It takes nats-server's own flags:
//
//	natsd -c deploy/nats/cluster/n1.conf --store-dir data/stack/nats/n1
//
// Flags given on the command line override the config file, as with
// nats-server. --store-dir DIR (natsd's own) replaces the file's
// jetstream.store_dir, which nats-server's -sd refuses to do.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

func main() {
	fs := flag.NewFlagSet("natsd", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: natsd -c FILE [nats-server flags]")
		fs.PrintDefaults()
	}
	args, storeDir := storeDirFlag(os.Args[1:])
	opts, err := server.ConfigureOptions(fs, args,
		server.PrintServerAndExit, fs.Usage, server.PrintTLSHelpAndDie)
	if err != nil {
		server.PrintAndDie(fmt.Sprintf("natsd: %v", err))
	}
	if opts.ConfigFile == "" {
		server.PrintAndDie("natsd: -c FILE is required")
	}
	if storeDir != "" {
		opts.StoreDir = storeDir
	}
	s, err := server.NewServer(opts)
	if err != nil {
		server.PrintAndDie(fmt.Sprintf("natsd: %v", err))
	}
	s.ConfigureLogger()
	// Run handles SIGINT/SIGTERM (shut down) and SIGHUP (reload the config).
	if err := server.Run(s); err != nil {
		server.PrintAndDie(err.Error())
	}
	s.WaitForShutdown()
}

// storeDirFlag takes --store-dir DIR (or --store-dir=DIR) out of args.
func storeDirFlag(args []string) (rest []string, dir string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--store-dir" || a == "-store-dir":
			if i+1 < len(args) {
				dir = args[i+1]
				i++
			}
		case strings.HasPrefix(a, "--store-dir="):
			dir = strings.TrimPrefix(a, "--store-dir=")
		case strings.HasPrefix(a, "-store-dir="):
			dir = strings.TrimPrefix(a, "-store-dir=")
		default:
			rest = append(rest, a)
		}
	}
	return rest, dir
}
