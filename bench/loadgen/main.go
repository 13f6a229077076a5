// Command loadgen drives one HTTP target at a fixed concurrency and prints
// one JSON object with what it measured. Every figure in bench/RESULTS.md
// comes from it, so the references and LLMProxy are measured by the same
// client.
//
// Modes:
//
//   - request: each of --concurrency workers sends non-stream requests back
//     to back on its own keep-alive connection, for --duration or until
//     --requests have been sent in all; it reports req/s and latency
//     percentiles.
//   - stream: each worker opens streams back to back and reads them to the
//     end; it reports time to first event (TTFT) and per-event lag, the
//     receive time minus the event's mock_sent_ns stamp.
//   - idle: opens --concurrency streams that the upstream holds open (a long
//     X-Mock-Ttft), waits until the upstream counts them all in flight,
//     writes --ready-file and holds them until --hold passes or it is
//     signalled.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// headerFlags collects repeated --header "Name: value" flags.
type headerFlags [][2]string

func (h *headerFlags) String() string { return fmt.Sprint(*h) }

func (h *headerFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	if !ok {
		return fmt.Errorf("header %q: want Name: value", s)
	}
	*h = append(*h, [2]string{strings.TrimSpace(name), strings.TrimSpace(value)})
	return nil
}

// config is everything a run needs, from the flags.
type config struct {
	url         string
	mode        string
	concurrency int
	duration    time.Duration
	warmup      time.Duration
	stagger     time.Duration
	requests    int64
	body        string
	headers     headerFlags
	inflightURL string
	readyFile   string
	hold        time.Duration
	label       string
	cpu         cpuFlags
}

func main() {
	var c config
	flag.StringVar(&c.url, "url", "http://127.0.0.1:9000/v1/chat/completions", "target URL")
	flag.StringVar(&c.mode, "mode", "request", "request, stream or idle")
	flag.IntVar(&c.concurrency, "concurrency", 1, "workers (request, stream) or open streams (idle)")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "how long to measure (request, stream)")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "load before measuring starts; not counted")
	flag.DurationVar(&c.stagger, "stagger", 0, "stream: spread the workers' first streams evenly over this long (e.g. one stream's length), so that streams start and send their events spread out rather than all at once")
	flag.Int64Var(&c.requests, "requests", 0, "stop after this many measured requests in all (0: run for --duration)")
	flag.StringVar(&c.body, "body", "", "request body (default: a small chat completion, streamed in stream and idle modes)")
	flag.Var(&c.headers, "header", `extra request header "Name: value" (repeatable)`)
	flag.StringVar(&c.inflightURL, "inflight-url", "", "idle: mockllm /metrics URL; the streams count as open once mock_requests_inflight reaches --concurrency")
	flag.StringVar(&c.readyFile, "ready-file", "", "idle: file written once every stream is open")
	flag.DurationVar(&c.hold, "hold", 10*time.Minute, "idle: how long to hold the streams open")
	flag.StringVar(&c.label, "label", "", "copied into the output")
	flag.Var(&c.cpu, "cpu", "request, stream: NAME=PID of a process whose CPU time in the measured window is reported per request or per event (repeatable; PIDs sharing a NAME are summed)")
	flag.Parse()

	if c.body == "" {
		stream := c.mode != "request"
		c.body = fmt.Sprintf(`{"model":"mock-model","stream":%t,"messages":[{"role":"user","content":"Hello there, how are you today?"}]}`, stream)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var (
		res any
		err error
	)
	switch c.mode {
	case "request":
		res, err = runRequests(ctx, c)
	case "stream":
		res, err = runStreams(ctx, c)
	case "idle":
		res, err = runIdle(ctx, c)
	default:
		err = fmt.Errorf("unknown --mode %q (want request, stream or idle)", c.mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
