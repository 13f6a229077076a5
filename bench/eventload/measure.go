package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// MeasureResult is the output of measure.
type MeasureResult struct {
	Label     string  `json:"label,omitempty"`
	Events    int     `json:"events"`
	PublishS  float64 `json:"publish_seconds"`
	PublishPS float64 `json:"published_per_s"`
	// DoneS runs from the first publish to the counter reaching its
	// baseline plus Events.
	DoneS float64 `json:"done_seconds"`
	Rate  float64 `json:"per_s"`
	// Counted is how far the counter moved.
	Counted float64 `json:"counted"`
}

func cmdMeasure(args []string) error {
	fs := flag.NewFlagSet("measure", flag.ContinueOnError)
	natsURL := fs.String("nats", "nats://127.0.0.1:4222", "NATS URL")
	n := fs.Int("n", 20000, "events to publish")
	keys := fs.Int("keys", 16, "distinct key ids the events are spread over")
	runID := fs.String("run", strconv.FormatInt(time.Now().UnixNano(), 36), "prefix of request ids, unique per run")
	metricsURL := fs.String("metrics", "", "the consumer's /metrics URL")
	metric := fs.String("metric", "llmproxy_meter_events_applied_total", "counter to watch (all its series summed)")
	match := fs.String("match", "", "only series whose labels contain this")
	timeout := fs.Duration("timeout", 3*time.Minute, "give up after this long")
	label := fs.String("label", "", "copied into the output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *metricsURL == "" {
		return fmt.Errorf("--metrics is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	nc, err := nats.Connect(*natsURL)
	if err != nil {
		return fmt.Errorf("connect %s: %w", *natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		return err
	}
	base, err := readCounter(*metricsURL, *metric, *match)
	if err != nil {
		return err
	}
	bodies := make([][]byte, *n)
	ids := make([]string, *n)
	subjects := make([]string, *keys)
	for k := range subjects {
		subjects[k] = events.Subject(fmt.Sprintf("bench-%s-%d", *runID, k))
	}
	now := time.Now().UTC()
	for i := range *n {
		ids[i] = fmt.Sprintf("%s-%d", *runID, i)
		ev := &events.RequestCompleted{
			RequestID: ids[i], UserID: "bench", APIKey: "sk-…bench",
			Usage:    events.Usage{PromptTokens: 12, CompletionTokens: 20, TotalTokens: 32},
			Endpoint: "/v1/chat/completions", Timestamp: now, BackendURL: "http://127.0.0.1:9000",
			LatencyMS: 1, StatusCode: 200, KeyID: fmt.Sprintf("bench-%s-%d", *runID, i%*keys),
			KeyName: "bench", Model: "mock-model", UsageSource: events.UsageSourceBackend,
			FinishReason: "stop", ClientIP: "127.0.0.1", Reservation: 64, QuotaPeriod: "monthly",
		}
		if bodies[i], err = ev.Marshal(); err != nil {
			return err
		}
	}

	start := time.Now()
	for i := range *n {
		msg := &nats.Msg{Subject: subjects[i%*keys], Data: bodies[i], Header: nats.Header{}}
		msg.Header.Set(nats.MsgIdHdr, ids[i])
		if _, err := js.PublishMsgAsync(msg); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return fmt.Errorf("publish acks: %w", ctx.Err())
	}
	pub := time.Since(start)

	var got float64
	for {
		got, err = readCounter(*metricsURL, *metric, *match)
		if err == nil && got-base >= float64(*n) {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s moved by %.0f of %d before the timeout", *metric, got-base, *n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	done := time.Since(start)
	return json.NewEncoder(os.Stdout).Encode(MeasureResult{
		Label: *label, Events: *n,
		PublishS: pub.Seconds(), PublishPS: float64(*n) / pub.Seconds(),
		DoneS: done.Seconds(), Rate: float64(*n) / done.Seconds(), Counted: got - base,
	})
}

// readCounter sums the samples of metric (in any series whose label text
// contains match) in a Prometheus text exposition.
func readCounter(url, metric, match string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: status %d", url, resp.StatusCode)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, metric)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if match != "" && !strings.Contains(rest, match) {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		v, err := strconv.ParseFloat(rest[i+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("parse %q: %w", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}
