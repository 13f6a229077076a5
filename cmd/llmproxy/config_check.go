package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway"
	"github.com/llmproxy/llmproxy/services/recorder"
)

const configUsage = `Usage:
  llmproxy config check [--target T] FILE

Loads FILE as serve does, for every target: unknown keys, bad values,
environment variables that are not set, Lua scripts and logging.redact rules
that do not compile. With --target (all, gateway, meter, notifier,
recorder) it also checks that FILE has what serve --target T needs, such as
nats.url and redis.url for a gateway. Prints each problem with its line
number and key, and exits 1 when there is any.
`

// cmdConfig runs `llmproxy config check FILE`: every error on its own line
// with the file's line number, exit 1 when there is any.
func cmdConfig(args []string) int { return runConfig(args, os.Stdout, os.Stderr) }

func runConfig(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, configUsage)
		return 0
	}
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "llmproxy config: unknown command %q\n\n", args[0])
		}
		fmt.Fprint(stderr, configUsage)
		return 2
	}
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	target := fs.String("target", "", "also check what serve --target T needs")
	// Flags may come before or after FILE.
	parse := func(args []string) (int, bool) {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, configUsage)
			return 0, false
		} else if err != nil {
			fmt.Fprintf(stderr, "llmproxy config check: %v\n\n%s", err, configUsage)
			return 2, false
		}
		return 0, true
	}
	if code, ok := parse(args[1:]); !ok {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, configUsage)
		return 2
	}
	path := fs.Arg(0)
	if code, ok := parse(fs.Args()[1:]); !ok {
		return code
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "llmproxy config check: unexpected argument %q: it checks one file\n\n%s", fs.Arg(0), configUsage)
		return 2
	}
	switch *target {
	case "", "all", "gateway", "meter", "notifier", "recorder":
	default:
		fmt.Fprintf(stderr, "llmproxy config check: --target %q: want all, gateway, meter, notifier or recorder\n", *target)
		return 2
	}
	if err := checkConfig(path, *target); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok\n", path)
	return 0
}

// checkConfig loads path as every target would, compiles its Lua scripts
// and, given a target, checks that path has what that target needs.
func checkConfig(path, target string) error {
	cfg, err := loadConfig(path)
	if err != nil {
		var list *config.Errors
		if errors.As(err, &list) {
			return errors.New(list.Error())
		}
		return err
	}
	if err := gateway.CheckScripts(cfg.Lua.Scripts); err != nil {
		return fmt.Errorf("lua.scripts: %w", err)
	}
	if target != "" {
		return checkTarget(cfg, target)
	}
	return nil
}

// loadConfig loads path (config.Load) and checks what pkg/config cannot
// compile itself, with the same file:line form: the JSON paths of
// logging.redact, which only the gateway understands. `config check`,
// `serve` and its reload on SIGHUP all load through it, so that a file one
// accepts the others do not refuse.
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if err := checkRedact(cfg); err != nil {
		return nil, err
	}
	if err := checkStoreURLs(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// checkStoreURLs parses logging.postgres.url as the PostgreSQL client
// will, so that what it refuses (an unknown parameter, a bad sslmode) is a
// problem with its line here, not a recorder that retries for ever.
// (redis.url is parsed by config.Load itself, for every command.)
func checkStoreURLs(cfg *config.Config) error {
	errs := &config.Errors{}
	if u := cfg.Logging.Postgres.URL; u != "" {
		if err := recorder.CheckURL(u); err != nil {
			errs.List = append(errs.List, cfg.Problem("logging.postgres.url", "%v", err))
		}
	}
	if len(errs.List) == 0 {
		return nil
	}
	return errs
}

// checkRedact compiles cfg's logging.redact rules as the gateway will and
// returns a *config.Errors naming each rule that does not compile.
func checkRedact(cfg *config.Config) error {
	bad := gateway.CheckRedact(cfg.Logging.Redact)
	if len(bad) == 0 {
		return nil
	}
	errs := &config.Errors{}
	for i := range cfg.Logging.Redact {
		if e := bad[i]; e != nil {
			errs.List = append(errs.List, cfg.Problem(fmt.Sprintf("logging.redact[%d]", i), "%v", e))
		}
	}
	return errs
}
