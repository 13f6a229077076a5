// Command llmproxy runs LLMProxy's roles (gateway, meter, notifier) and its
// operator commands. See the README for every command.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usageText = `llmproxy — a gateway for self-hosted LLM inference

Usage:
  llmproxy serve --config FILE [--target all|gateway|meter|notifier|recorder] [--admin-listen ADDR]
  llmproxy config check [--target all|gateway|meter|notifier|recorder] FILE
  llmproxy usage --config FILE [--key ID] [--period daily|weekly|monthly|never] [--json]
  llmproxy keys create|update|list|show|disable|enable|delete --config FILE [ID] [flags]
  llmproxy logs --config FILE [--key ID] [--request-id ID] [--client-request-id ID] [--since 1h|7d|TIME] [--status N] [--limit N] [--from auto|stream|postgres] [--json]
  llmproxy webhooks dlq list --config FILE [--id ID] [--endpoint NAME] [--nats-url URL] [--json]
  llmproxy webhooks dlq replay --config FILE [--id ID] [--endpoint NAME] [--nats-url URL]
  llmproxy webhooks dlq discard --config FILE (--id ID | --endpoint NAME | --all) [--nats-url URL]
    (a dead letter's ID: its event id, ENDPOINT:EVENT_ID or its DLQ sequence number)
  llmproxy version
`

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usageText)
		return 2
	}
	switch args[0] {
	case "serve":
		return cmdServe(args[1:])
	case "config":
		return cmdConfig(args[1:])
	case "usage":
		return cmdUsage(args[1:])
	case "webhooks":
		return cmdWebhooks(args[1:])
	case "keys":
		return cmdKeys(args[1:])
	case "logs":
		return cmdLogs(args[1:])
	case "version", "--version":
		fmt.Println("llmproxy", version)
		return 0
	case "help", "-h", "--help":
		fmt.Print(usageText)
		return 0
	}
	fmt.Fprintf(os.Stderr, "llmproxy: unknown command %q\n\n%s", args[0], usageText)
	return 2
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool { return arg == "help" || arg == "-h" || arg == "--help" }

// parseFlags parses a command's args into fs. -h or --help prints the
// command's flags to stdout and ends it with exit 0; a bad flag is one line
// on stderr and exit 2. ok is false when the command should end with code.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage of llmproxy %s:\n", fs.Name())
		fs.PrintDefaults()
		return 0, false
	case err != nil:
		fmt.Fprintf(stderr, "llmproxy %s: %v (see llmproxy %s --help)\n", fs.Name(), err, fs.Name())
		return 2, false
	}
	return 0, true
}

// parseOnlyFlags is parseFlags for a command that takes no arguments but
// its flags: one left over (`usage --config F team-a`, the --key
// forgotten) is a usage error, not ignored.
func parseOnlyFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "llmproxy %s: unexpected argument %q (see llmproxy %s --help)\n", fs.Name(), fs.Arg(0), fs.Name())
		return 2, false
	}
	return 0, true
}
