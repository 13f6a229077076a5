package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// IdleResult is the output of idle mode.
type IdleResult struct {
	Label   string  `json:"label,omitempty"`
	Mode    string  `json:"mode"`
	URL     string  `json:"url"`
	Streams int     `json:"streams"`
	Open    int64   `json:"open"`
	Errors  int64   `json:"errors"`
	OpenSec float64 `json:"open_seconds"`
	// Upstream is mock_requests_inflight when the streams counted as open.
	Upstream int64 `json:"upstream_inflight"`
}

// dialWindow bounds how many requests are being written at once, so that
// opening thousands of streams does not overflow the listen backlogs.
const dialWindow = 128

func runIdle(ctx context.Context, c config) (*IdleResult, error) {
	client := newClient(c.concurrency)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, dialWindow)
	var errs errorLog
	var written atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range c.concurrency {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			release := func() { once.Do(func() { <-sem }) }
			defer release()
			req, err := newRequest(c)
			if err != nil {
				errs.add(err)
				return
			}
			trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) {
				written.Add(1)
				release()
			}}
			req = req.WithContext(httptrace.WithClientTrace(rctx, trace))
			resp, err := client.Do(req)
			if err != nil {
				if rctx.Err() == nil {
					errs.add(err)
				}
				return
			}
			// A reply this early means the upstream did not hold the
			// stream; read it off so the count stays honest.
			resp.Body.Close()
			errs.add(fmt.Errorf("stream answered early with status %d", resp.StatusCode))
		}()
	}
	r := &IdleResult{Label: c.label, Mode: c.mode, URL: c.url, Streams: c.concurrency}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("only %d of %d streams open after 3m (%d errors, first: %s)", written.Load(), c.concurrency, errs.n.Load(), errs.first)
		}
		if c.inflightURL == "" {
			if written.Load() >= int64(c.concurrency) {
				break
			}
		} else if n, err := mockInflight(c.inflightURL); err == nil && n >= int64(c.concurrency) {
			r.Upstream = n
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.OpenSec = time.Since(start).Seconds()
	r.Open = written.Load()
	r.Errors = errs.n.Load()
	if c.readyFile != "" {
		b, _ := json.Marshal(r)
		if err := os.WriteFile(c.readyFile, b, 0o644); err != nil {
			return nil, err
		}
	}
	select {
	case <-ctx.Done():
	case <-time.After(c.hold):
	}
	cancel()
	wg.Wait()
	return r, nil
}

// mockInflight reads mock_requests_inflight off mockllm's /metrics.
func mockInflight(url string) (int64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "mock_requests_inflight "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("mock_requests_inflight not in %s", url)
}
