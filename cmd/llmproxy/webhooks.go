package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"text/tabwriter"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/notifier"
)

// cmdWebhooks runs `llmproxy webhooks dlq list|replay`.
func cmdWebhooks(args []string) int {
	if len(args) < 2 || args[0] != "dlq" || (args[1] != "list" && args[1] != "replay") {
		fmt.Fprintln(os.Stderr, "usage: llmproxy webhooks dlq list|replay --config FILE [--id EVENT_ID] [--json] [--nats-url URL]")
		return 2
	}
	fs := flag.NewFlagSet("webhooks dlq", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (YAML)")
	id := fs.String("id", "", "only this event id")
	asJSON := fs.Bool("json", false, "print JSON")
	natsURL := fs.String("nats-url", "", "NATS to use (overrides nats.url)")
	if err := fs.Parse(args[2:]); err != nil {
		return 2
	}
	if *cfgPath == "" {
		fmt.Fprintln(os.Stderr, "llmproxy webhooks: --config is required")
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if *natsURL != "" {
		cfg.NATS.URL = *natsURL
	}
	if cfg.NATS.URL == "" {
		// The single binary's config: reach its embedded server through
		// the listener it opens.
		cfg.NATS.URL = embeddedURL(cfg.NATS.EmbeddedListen)
	}
	if cfg.NATS.URL == "" {
		fmt.Fprintln(os.Stderr, "llmproxy webhooks: no NATS to talk to: set nats.url, or nats.embedded_listen on the server, or pass --nats-url")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, err := openBus(ctx, cfg, false, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmproxy webhooks:", err)
		return 1
	}
	defer b.close()
	if args[1] == "replay" {
		n, err := notifier.Replay(ctx, b.js, endpointsOf(cfg), *id)
		fmt.Printf("replayed %d dead letter(s)\n", n)
		if err != nil {
			fmt.Fprintln(os.Stderr, "llmproxy webhooks:", err)
			return 1
		}
		return 0
	}
	list, err := notifier.ListDLQ(ctx, b.js, notifier.DLQFilter{ID: *id})
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmproxy webhooks:", err)
		return 1
	}
	if *asJSON {
		if list == nil {
			// An empty DLQ is an empty array, not null.
			list = []notifier.DeadLetter{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(list)
		return 0
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EVENT\tENDPOINT\tATTEMPTS\tLAST STATUS\tREASON\tFAILED AT")
	for _, d := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", d.EventID, d.Endpoint, d.Attempts, d.LastStatus, d.Reason, d.FailedAt.Format(time.RFC3339))
	}
	_ = tw.Flush()
	return 0
}

// embeddedURL is the client URL of an embedded server listening on listen
// ("host:port"), "" when it does not listen. A wildcard host is reached on
// the loopback address.
func embeddedURL(listen string) string {
	if listen == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	return "nats://" + net.JoinHostPort(host, port)
}
