// Command mockllm is a fake inference engine for tests, demos and
// benchmarks. It speaks the OpenAI/vLLM, TGI, Ollama and Anthropic wire
// formats with configurable latency, faults and load; see README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mockllm:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	o := options{knobs: defaultKnobs()}
	fs := flag.NewFlagSet("mockllm", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9000", "address to listen on")
	fs.IntVar(&o.Tokens, "tokens", o.Tokens, "completion tokens per reply")
	fs.DurationVar(&o.TTFT, "ttft", o.TTFT, "time before the first byte")
	fs.DurationVar(&o.Gap, "gap", o.Gap, "time between streamed tokens")
	fs.Float64Var(&o.ErrorRate, "error-rate", o.ErrorRate, "fraction (0..1) of requests that fail")
	fs.IntVar(&o.ErrorStatus, "error-status", o.ErrorStatus, "HTTP status of injected errors")
	fs.IntVar(&o.DropAfter, "drop-after", o.DropAfter, "drop stream connections after N token events (-1: never)")
	fs.BoolVar(&o.CloseAfterStream, "close-after-stream", o.CloseAfterStream, "send Connection: close after streamed responses")
	fs.BoolVar(&o.OmitUsage, "omit-usage", o.OmitUsage, "never report token usage")
	fs.StringVar(&o.Model, "model", o.Model, "model name reported by /v1/models and used when a request names none")
	fs.StringVar(&o.Name, "name", o.Name, "value of the X-Mock-Backend response header")
	fs.IntVar(&o.Waiting, "waiting", 0, "vllm:num_requests_waiting reported by /metrics")
	fs.Float64Var(&o.GPUCache, "gpu-cache", 0, "vllm:gpu_cache_usage_perc (0..1) reported by /metrics")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := o.validate(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	o.Logger = log

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	srv := &http.Server{
		Handler:           newServer(o),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("mockllm listening", "addr", ln.Addr().String(), "model", o.Model, "name", o.Name)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
