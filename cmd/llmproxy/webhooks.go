package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/notifier"
)

// webhooksConnectTimeout bounds how long the webhooks commands try to reach NATS.
var webhooksConnectTimeout = 60 * time.Second

const webhooksUsage = "usage: llmproxy webhooks dlq list --config FILE [--id ID] [--endpoint NAME] [--json] [--nats-url URL]\n" +
	"       llmproxy webhooks dlq replay --config FILE [--id ID] [--endpoint NAME] [--nats-url URL]\n" +
	"       llmproxy webhooks dlq discard --config FILE (--id ID | --endpoint NAME | --all) [--nats-url URL]"

// cmdWebhooks runs `llmproxy webhooks dlq list|replay|discard`.
func cmdWebhooks(args []string) int {
	return runWebhooks(args, os.Stdout, os.Stderr)
}

// runWebhooks is cmdWebhooks writing to stdout and stderr. Without nats.url
// (or --nats-url) it reaches the embedded server of data_dir: the running
// serve's, or one of its own on the store (embedded.go).
func runWebhooks(args []string, stdout, stderr io.Writer) int {
	if n := len(args); n > 0 && n <= 2 && isHelp(args[n-1]) {
		fmt.Fprintln(stdout, webhooksUsage)
		return 0
	}
	if len(args) < 2 || args[0] != "dlq" || (args[1] != "list" && args[1] != "replay" && args[1] != "discard") {
		switch {
		case len(args) > 0 && args[0] != "dlq" && !strings.HasPrefix(args[0], "-"):
			fmt.Fprintf(stderr, "llmproxy webhooks: unknown command %q\n", args[0])
		case len(args) > 1 && args[0] == "dlq" && !strings.HasPrefix(args[1], "-"):
			fmt.Fprintf(stderr, "llmproxy webhooks dlq: unknown command %q\n", args[1])
		}
		fmt.Fprintln(stderr, webhooksUsage)
		return 2
	}
	// Each subcommand has the flags it takes (its --help lists no other):
	// --json is list's, --all discard's.
	fs := flag.NewFlagSet("webhooks dlq "+args[1], flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (YAML)")
	id := fs.String("id", "", "only this dead letter: its event id, ENDPOINT:EVENT_ID, or its sequence number in the DLQ (list's SEQ)")
	asJSON, all := new(bool), new(bool)
	if args[1] == "list" {
		fs.BoolVar(asJSON, "json", false, "print JSON")
	}
	natsURL := fs.String("nats-url", "", "NATS to use (overrides nats.url)")
	endpoint := fs.String("endpoint", "", "only the dead letters of this endpoint")
	if args[1] == "discard" {
		fs.BoolVar(all, "all", false, "every dead letter")
	}
	if code, ok := parseOnlyFlags(fs, args[2:], stdout, stderr); !ok {
		return code
	}
	if *all && (*id != "" || *endpoint != "") {
		// --all with a filter would be read one way by one reader and
		// the other way by another: refuse rather than choose.
		fmt.Fprintln(stderr, "llmproxy webhooks dlq discard: --all discards every dead letter; give it without --id or --endpoint")
		return 2
	}
	if args[1] == "discard" && *id == "" && *endpoint == "" && !*all {
		// Deleting is for good: what to delete is said, never implied.
		fmt.Fprintln(stderr, "llmproxy webhooks dlq discard: say which: --id ID, --endpoint NAME or --all")
		return 2
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "llmproxy webhooks: --config is required")
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if *natsURL != "" {
		cfg.NATS.URL = *natsURL
	}
	// Listing and replaying take as long as the dead letters need (one
	// POST each, bounded by its endpoint's timeout), until interrupted;
	// only reaching NATS has a deadline.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	bctx, cancel := context.WithTimeout(ctx, webhooksConnectTimeout)
	defer cancel()
	b, err := openCLIBus(bctx, cfg, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		fmt.Fprintln(stderr, "llmproxy webhooks:", err)
		return 1
	}
	defer b.close()
	// An endpoint the config does not name may still have dead letters (it
	// was removed since); one that has none is likely a typo, and is said
	// so, as an unknown --id is.
	unknownEndpoint := func(found int) bool {
		if found > 0 || *endpoint == "" {
			return false
		}
		var names []string
		for _, e := range cfg.Endpoints() {
			if e.Name == *endpoint {
				return false
			}
			names = append(names, e.Name)
		}
		named := "it names no endpoint"
		if len(names) > 0 {
			named = "it names: " + strings.Join(names, ", ")
		}
		fmt.Fprintf(stderr, "llmproxy webhooks: no dead letters of endpoint %q, which the config does not name (%s)\n", *endpoint, named)
		return true
	}
	// The dead letters of an endpoint include those recorded under the
	// name it had before a release named it otherwise.
	filter := notifier.DLQFilter{ID: *id, Endpoint: *endpoint}
	for _, e := range cfg.Endpoints() {
		if *endpoint != "" && e.Name == *endpoint {
			filter.FormerName = e.LegacyName
		}
	}
	if args[1] == "discard" {
		n, err := notifier.Discard(ctx, b.js, filter)
		if err == nil && unknownEndpoint(n) {
			return 1
		}
		if err == nil || n > 0 { // how far it got before the error
			fmt.Fprintf(stdout, "discarded %d dead letter(s)\n", n)
		}
		if err != nil {
			fmt.Fprintln(stderr, "llmproxy webhooks:", err)
			return 1
		}
		return 0
	}
	if args[1] == "replay" {
		eps, err := endpointsOf(cfg)
		if err != nil {
			fmt.Fprintln(stderr, "llmproxy webhooks:", err)
			return 1
		}
		n, err := notifier.Replay(ctx, b.js, eps, filter)
		if err == nil && unknownEndpoint(n) {
			return 1
		}
		if err == nil || n > 0 { // how far it got before the error
			fmt.Fprintf(stdout, "replayed %d dead letter(s)\n", n)
		}
		if err != nil {
			fmt.Fprintln(stderr, "llmproxy webhooks:", err)
			return 1
		}
		return 0
	}
	list, err := notifier.ListDLQ(ctx, b.js, filter)
	if err != nil {
		fmt.Fprintln(stderr, "llmproxy webhooks:", err)
		return 1
	}
	if unknownEndpoint(len(list)) {
		return 1
	}
	if *id != "" && len(list) == 0 {
		// As replay and discard say of an --id that names none.
		fmt.Fprintf(stderr, "llmproxy webhooks: no dead letter %q\n", *id)
		return 1
	}
	if *asJSON {
		// Each with its sequence in LLMPROXY_DLQ, which --id takes.
		out := make([]listedLetter, len(list))
		for i, d := range list {
			out[i] = listedLetter{Seq: d.Seq, DeadLetter: d}
		}
		writeJSONList(stdout, out)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tEVENT\tENDPOINT\tATTEMPTS\tLAST STATUS\tREASON\tFAILED AT")
	for _, d := range list {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\t%s\n", d.Seq, d.EventID, d.Endpoint, d.Attempts, d.LastStatus, d.Reason, d.FailedAt.Format(time.RFC3339))
	}
	_ = tw.Flush()
	return 0
}

// listedLetter is a dead letter as `webhooks dlq list --json` prints it:
// the stored record and its sequence in LLMPROXY_DLQ.
type listedLetter struct {
	Seq uint64 `json:"seq"`
	notifier.DeadLetter
}
