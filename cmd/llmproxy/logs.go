package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/recorder"
)

const logsUsage = "usage: llmproxy logs --config FILE [--key ID] [--request-id ID] [--client-request-id ID] [--since 1h|7d|TIME] [--status N] [--limit N] [--from auto|stream|postgres] [--json]"

// cmdLogs runs `llmproxy logs`: the request log, read from PostgreSQL when
// logging.postgres.url is set, else straight from the event stream.
func cmdLogs(args []string) int {
	return runLogs(args, os.Stdout, os.Stderr)
}

// runLogs is cmdLogs writing to stdout and stderr.
func runLogs(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (YAML)")
	key := fs.String("key", "", "only this key (public id)")
	requestID := fs.String("request-id", "", "only this request, by the gateway's id (searches the whole log unless --since is given)")
	clientID := fs.String("client-request-id", "", "only the requests whose client sent this X-Request-Id (searches the whole log unless --since is given)")
	since := fs.String("since", "", "earliest request: a duration back from now (1h, 30m, 7d) or a time (RFC3339; or 2006-01-02 or 2006-01-02T15:04:05 in the local zone, as the table shows times); default 1h")
	status := fs.Int("status", 0, "only this HTTP status code")
	limit := fs.Int("limit", recorder.DefaultLimit, "most requests shown, the newest")
	from := fs.String("from", "auto", "where to read: auto (postgres when logging.postgres.url is set, else the stream), stream or postgres")
	asJSON := fs.Bool("json", false, "print the events as JSON")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if *cfgPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, logsUsage)
		return 2
	}
	if *limit <= 0 {
		fmt.Fprintln(stderr, "llmproxy logs: --limit: want a number of requests above 0, got", *limit)
		return 2
	}
	if *status != 0 && (*status < 100 || *status > 599) {
		fmt.Fprintln(stderr, "llmproxy logs: --status: want an HTTP status, 100 to 599 (499: the client left), got", *status)
		return 2
	}
	f := recorder.Filter{KeyID: *key, RequestID: *requestID, ClientRequestID: *clientID, Status: *status, Limit: *limit}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			fmt.Fprintln(stderr, "llmproxy logs: --since:", err)
			return 2
		}
		f.Since = t
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
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
		fmt.Fprintf(stderr, "llmproxy logs: --from %q: want auto, stream or postgres\n", *from)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	list, err := readLogs(ctx, cfg, *from, f, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "llmproxy logs:", err)
		return 1
	}
	// A request asked for by id and not found is an error, with --json too.
	if (*requestID != "" || *clientID != "") && len(list) == 0 {
		where := "event stream"
		if *from == "postgres" {
			where = "PostgreSQL request log"
		}
		what := "request " + *requestID
		if *requestID == "" {
			what = "client request id " + *clientID
		}
		fmt.Fprintf(stderr, "llmproxy logs: %s not found in the %s\n", what, where)
		return 1
	}
	if *asJSON {
		writeJSONList(stdout, list)
		return 0
	}
	printLogs(stdout, list)
	return 0
}

// readLogs reads the request log from PostgreSQL or the stream. Without
// nats.url the stream is the embedded server's on data_dir: the running
// serve's, or one of the command's own on the store (embedded.go). Warnings
// go to stderr.
func readLogs(ctx context.Context, cfg *config.Config, from string, f recorder.Filter, stderr io.Writer) ([]events.RequestCompleted, error) {
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
	b, err := openCLIBus(ctx, cfg, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		return nil, err
	}
	defer b.close()
	return recorder.ReadStream(ctx, b.js, f)
}

// parseSince reads --since: a duration back from now, an RFC 3339 time, or
// a time without a zone or a date (midnight) in now's zone, the local one
// the table shows its times in.
func parseSince(s string, now time.Time) (time.Time, error) {
	if strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		return time.Time{}, fmt.Errorf("%q: give how far back without a sign (1h, 30m, 7d) or a time (RFC3339, or 2006-01-02 or 2006-01-02T15:04:05 in the local zone)", s)
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if n, err := strconv.Atoi(strings.TrimSuffix(s, "d")); err == nil && strings.HasSuffix(s, "d") {
		return now.AddDate(0, 0, -n), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, now.Location()); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (1h, 30m, 7d) nor a time (RFC3339, or 2006-01-02 or 2006-01-02T15:04:05 in the local zone)", s)
}

// printLogs writes one line per request.
func printLogs(w io.Writer, list []events.RequestCompleted) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// The local time, its zone named in the header (--since reads a time
	// without a zone in it too).
	zone, _ := time.Now().Zone()
	fmt.Fprintln(tw, "TIME ("+zone+")\tREQUEST ID\tKEY\tMODEL\tSTATUS\tTOKENS (P+C=T)\tLATENCY\tERROR")
	for _, e := range list {
		key := e.KeyID
		if e.KeyName != "" && e.KeyName != e.KeyID {
			key += " (" + e.KeyName + ")"
		}
		key = cell(key)
		tokens := fmt.Sprintf("%d+%d=%d", e.Usage.PromptTokens, e.Usage.CompletionTokens, e.Usage.TotalTokens)
		if e.UsageSource == events.UsageSourceEstimated {
			tokens += "~"
		}
		model := cell(e.Model)
		if e.IsStream {
			model += " (stream)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%dms\t%s\n",
			e.Timestamp.Local().Format("2006-01-02 15:04:05.000"), cell(e.RequestID), key, model,
			e.StatusCode, tokens, e.LatencyMS, oneLine(e.Error, 60))
	}
	_ = tw.Flush()
}

func oneLine(s string, n int) string {
	s = cell(strings.Join(strings.Fields(s), " "))
	if r := []rune(s); len(r) > n {
		s = string(r[:n]) + "…"
	}
	return s
}

// cell is s, a value a client or a key's maker chose, fit for one cell of
// a table a terminal shows: whitespace becomes a space, and other control
// and format characters (an escape sequence, a direction override) and
// bytes that are not UTF-8 become '?', so that a model name cannot forge
// a row or drive the terminal.
func cell(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
			return ' '
		case r == utf8.RuneError || keys.Unprintable(r):
			return '?'
		}
		return r
	}, s)
}

// writeJSONList writes list as indented JSON; an empty list is [], not null.
func writeJSONList[T any](w io.Writer, list []T) {
	if list == nil {
		list = []T{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(list)
}
