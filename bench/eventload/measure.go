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
	// Backlog: the events were published before the consumer started
	// (measure --backlog); DoneS and Rate run from the counter's first
	// move.
	Backlog bool `json:"backlog,omitempty"`
}

// publishFlags are the flags measure and publish share.
type publishFlags struct {
	natsURL, runID *string
	n, keys        *int
	timeout        *time.Duration
}

func addPublishFlags(fs *flag.FlagSet) publishFlags {
	return publishFlags{
		natsURL: fs.String("nats", "nats://127.0.0.1:4222", "NATS URL"),
		n:       fs.Int("n", 20000, "events to publish"),
		keys:    fs.Int("keys", 16, "distinct key ids the events are spread over"),
		runID:   fs.String("run", strconv.FormatInt(time.Now().UnixNano(), 36), "prefix of request ids, unique per run"),
		timeout: fs.Duration("timeout", 3*time.Minute, "give up after this long"),
	}
}

// run connects to NATS, makes the event streams and publishes the events;
// it returns when it began publishing and how long until every publish was
// acked.
func (pf publishFlags) run(ctx context.Context) (time.Time, time.Duration, error) {
	js, closeNATS, err := connect(ctx, *pf.natsURL)
	if err != nil {
		return time.Time{}, 0, err
	}
	defer closeNATS()
	start := time.Now()
	err = publish(ctx, js, *pf.n, *pf.keys, *pf.runID)
	return start, time.Since(start), err
}

func cmdMeasure(args []string) error {
	fs := flag.NewFlagSet("measure", flag.ContinueOnError)
	pf := addPublishFlags(fs)
	metricsURL := fs.String("metrics", "", "the consumer's /metrics URL")
	metric := fs.String("metric", "llmproxy_meter_events_applied_total", "counter to watch (all its series summed)")
	match := fs.String("match", "", "only series whose labels contain this")
	backlog := fs.Bool("backlog", false, "publish nothing: the n events are already in the stream (eventload publish) and the consumer was started after them; time from the counter's first move")
	label := fs.String("label", "", "copied into the output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *metricsURL == "" {
		return fmt.Errorf("--metrics is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *pf.timeout)
	defer cancel()

	n := *pf.n
	if *backlog {
		return measureBacklog(ctx, *label, n, *metricsURL, *metric, *match)
	}
	base, err := readCounter(*metricsURL, *metric, *match)
	if err != nil {
		return err
	}
	start, pub, err := pf.run(ctx)
	if err != nil {
		return err
	}

	var got float64
	for {
		got, err = readCounter(*metricsURL, *metric, *match)
		if err == nil && got-base >= float64(n) {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s moved by %.0f of %d before the timeout", *metric, got-base, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	done := time.Since(start)
	return json.NewEncoder(os.Stdout).Encode(MeasureResult{
		Label: *label, Events: n,
		PublishS: pub.Seconds(), PublishPS: float64(n) / pub.Seconds(),
		DoneS: done.Seconds(), Rate: float64(n) / done.Seconds(), Counted: got - base,
	})
}

// measureBacklog times a consumer started after its n events were
// published, from the first move of its counter (which was 0) until the
// counter reaches n: its rate with nothing else running, the publisher
// done. The events it applied before the first poll saw a move are left
// out of the rate, as is the time they took.
func measureBacklog(ctx context.Context, label string, n int, metricsURL, metric, match string) error {
	var first, got float64
	var t0 time.Time
	for {
		v, err := readCounter(metricsURL, metric, match)
		switch {
		case err != nil:
		case t0.IsZero() && v > 0:
			first, t0 = v, time.Now()
		case v >= float64(n):
			got = v
		}
		if got > 0 {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s at %.0f of %d before the timeout", metric, v, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got == first {
		return fmt.Errorf("%s went from 0 to %.0f between two polls: publish more events to time it", metric, got)
	}
	done := time.Since(t0)
	return json.NewEncoder(os.Stdout).Encode(MeasureResult{
		Label: label, Events: n, Backlog: true,
		DoneS: done.Seconds(), Rate: (got - first) / done.Seconds(), Counted: got,
	})
}

// cmdPublish publishes n events and prints how fast, for measure --backlog.
func cmdPublish(args []string) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	pf := addPublishFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *pf.timeout)
	defer cancel()
	_, pub, err := pf.run(ctx)
	if err != nil {
		return err
	}
	n := *pf.n
	return json.NewEncoder(os.Stdout).Encode(MeasureResult{Events: n, PublishS: pub.Seconds(), PublishPS: float64(n) / pub.Seconds()})
}

// connect connects to NATS and makes the event streams.
func connect(ctx context.Context, url string) (jetstream.JetStream, func(), error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", url, err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err == nil {
		err = events.EnsureStreams(ctx, js, events.StreamOptions{})
	}
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}

// publish publishes n events over keys key ids and waits for their acks.
func publish(ctx context.Context, js jetstream.JetStream, n, keys int, runID string) error {
	bodies := make([][]byte, n)
	ids := make([]string, n)
	subjects := make([]string, keys)
	for k := range subjects {
		subjects[k] = events.Subject(fmt.Sprintf("bench-%s-%d", runID, k))
	}
	now := time.Now().UTC()
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%d", runID, i)
		ev := &events.RequestCompleted{
			RequestID: ids[i], UserID: "bench", APIKey: "sk-…bench",
			Usage:    events.Usage{PromptTokens: 12, CompletionTokens: 20, TotalTokens: 32},
			Endpoint: "/v1/chat/completions", Timestamp: now, BackendURL: "http://127.0.0.1:9000",
			LatencyMS: 1, StatusCode: 200, KeyID: fmt.Sprintf("bench-%s-%d", runID, i%keys),
			KeyName: "bench", Model: "mock-model", UsageSource: events.UsageSourceBackend,
			FinishReason: "stop", ClientIP: "127.0.0.1", Reservation: 64, QuotaPeriod: "monthly",
		}
		var err error
		if bodies[i], err = ev.Marshal(); err != nil {
			return err
		}
	}
	for i := range n {
		msg := &nats.Msg{Subject: subjects[i%keys], Data: bodies[i], Header: nats.Header{}}
		msg.Header.Set(nats.MsgIdHdr, ids[i])
		if _, err := js.PublishMsgAsync(msg); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publish acks: %w", ctx.Err())
	}
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
