package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/services/recorder"
)

const logsUsage = "usage: llmproxy logs --config FILE [--key ID] [--request-id ID] [--client-request-id ID] [--since 1h|RFC3339] [--status N] [--limit N] [--from auto|stream|postgres] [--json]"

// cmdLogs runs `llmproxy logs`: the request log, read from PostgreSQL when
// logging.postgres.url is set, else straight from the event stream.
func cmdLogs(args []string) int {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (YAML)")
	key := fs.String("key", "", "only this key (public id)")
	requestID := fs.String("request-id", "", "only this request, by the gateway's id (searches the whole log unless --since is given)")
	clientID := fs.String("client-request-id", "", "only the requests whose client sent this X-Request-Id (searches the whole log unless --since is given)")
	since := fs.String("since", "", "earliest request: a duration back from now (1h, 30m) or a time (RFC3339 or 2006-01-02); default 1h")
	status := fs.Int("status", 0, "only this HTTP status code")
	limit := fs.Int("limit", recorder.DefaultLimit, "most requests shown, the newest")
	from := fs.String("from", "auto", "where to read: auto (postgres when logging.postgres.url is set, else the stream), stream or postgres")
	asJSON := fs.Bool("json", false, "print the events as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, logsUsage)
		return 2
	}
	f := recorder.Filter{KeyID: *key, RequestID: *requestID, ClientRequestID: *clientID, Status: *status, Limit: *limit}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			fmt.Fprintln(os.Stderr, "llmproxy logs: --since:", err)
			return 2
		}
		f.Since = t
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	switch *from {
	case "auto":
		*from = "stream"
		if cfg.Logging.Postgres.URL != "" {
			*from = "postgres"
		}
	case "stream", "postgres":
	default:
		fmt.Fprintf(os.Stderr, "llmproxy logs: --from %q: want auto, stream or postgres\n", *from)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	list, err := readLogs(ctx, cfg, *from, f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmproxy logs:", err)
		return 1
	}
	if *asJSON {
		if list == nil {
			list = []events.RequestCompleted{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(list)
		return 0
	}
	if (*requestID != "" || *clientID != "") && len(list) == 0 {
		where := "event stream"
		if *from == "postgres" {
			where = "PostgreSQL request log"
		}
		what := "request " + *requestID
		if *requestID == "" {
			what = "client request id " + *clientID
		}
		fmt.Fprintf(os.Stderr, "llmproxy logs: %s not found in the %s\n", what, where)
		return 1
	}
	printLogs(os.Stdout, list)
	return 0
}

func readLogs(ctx context.Context, cfg *config.Config, from string, f recorder.Filter) ([]events.RequestCompleted, error) {
	if from == "postgres" {
		if cfg.Logging.Postgres.URL == "" {
			return nil, fmt.Errorf("logging.postgres.url is not set")
		}
		pool, err := recorder.OpenPool(ctx, cfg.Logging.Postgres.URL)
		if err != nil {
			return nil, err
		}
		defer pool.Close()
		return recorder.Query(ctx, pool, f)
	}
	if cfg.NATS.URL == "" {
		if cfg.NATS.EmbeddedListen == "" {
			return nil, fmt.Errorf("nats.url is required to read the request log from the stream " +
				"(with the embedded server, set nats.embedded_listen, e.g. 127.0.0.1:4333, and run llmproxy serve: " +
				"logs then reads from it; or point nats.url at a NATS server), " +
				"or set logging.postgres.url to read it from PostgreSQL")
		}
		// The embedded server of a running `llmproxy serve` accepts
		// clients on nats.embedded_listen.
		c := *cfg
		c.NATS.URL = "nats://" + cfg.NATS.EmbeddedListen
		cfg = &c
	}
	b, err := openBus(ctx, cfg, false, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		return nil, err
	}
	defer b.close()
	return recorder.ReadStream(ctx, b.js, f)
}

// parseSince reads --since: a duration back from now, an RFC 3339 time or
// a date (midnight UTC).
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			d = -d
		}
		return now.Add(-d), nil
	}
	if n, err := strconv.Atoi(strings.TrimSuffix(s, "d")); err == nil && strings.HasSuffix(s, "d") && n >= 0 {
		return now.AddDate(0, 0, -n), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (1h, 30m, 7d) nor a time (RFC3339 or 2006-01-02)", s)
}

// printLogs writes one line per request.
func printLogs(w *os.File, list []events.RequestCompleted) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tREQUEST ID\tKEY\tMODEL\tSTATUS\tTOKENS (P+C=T)\tLATENCY\tERROR")
	for _, e := range list {
		key := e.KeyID
		if e.KeyName != "" && e.KeyName != e.KeyID {
			key += " (" + e.KeyName + ")"
		}
		tokens := fmt.Sprintf("%d+%d=%d", e.Usage.PromptTokens, e.Usage.CompletionTokens, e.Usage.TotalTokens)
		if e.UsageSource == events.UsageSourceEstimated {
			tokens += "~"
		}
		model := e.Model
		if e.IsStream {
			model += " (stream)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%dms\t%s\n",
			e.Timestamp.Local().Format("2006-01-02 15:04:05.000"), e.RequestID, key, model,
			e.StatusCode, tokens, e.LatencyMS, oneLine(e.Error, 60))
	}
	_ = tw.Flush()
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		s = string(r[:n]) + "…"
	}
	return s
}
