package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// RequestResult is the output of request mode.
type RequestResult struct {
	Label       string  `json:"label,omitempty"`
	Mode        string  `json:"mode"`
	URL         string  `json:"url"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"`
	OK          int64   `json:"ok"`
	Errors      int64   `json:"errors"`
	// FirstError is the first failure seen, for the log.
	FirstError string  `json:"first_error,omitempty"`
	RPS        float64 `json:"rps"`
	Latency    Dist    `json:"latency"`
	// CPUUSPerRequest is, per --cpu name, the CPU time its processes used
	// in the measured window divided by the requests measured (µs).
	CPUUSPerRequest map[string]float64 `json:"cpu_us_per_request,omitempty"`
}

// errorLog keeps the error count and the first error.
type errorLog struct {
	n     atomic.Int64
	once  sync.Once
	first string
}

func (e *errorLog) add(err error) {
	e.n.Add(1)
	e.once.Do(func() { e.first = err.Error() })
}

// window tells whether a sample taken at t is measured: after the warm-up,
// before the end, and within the request budget.
type window struct {
	start, end time.Time
	budget     int64 // 0: none
	taken      atomic.Int64
}

func newWindow(c config) *window {
	start := time.Now().Add(c.warmup)
	return &window{start: start, end: start.Add(c.duration), budget: c.requests}
}

// done reports whether workers should stop.
func (w *window) done(now time.Time) bool {
	if w.budget > 0 {
		return w.taken.Load() >= w.budget
	}
	return now.After(w.end)
}

// take reports whether a request that started at t counts.
func (w *window) take(t time.Time) bool {
	if t.Before(w.start) {
		return false
	}
	if w.budget > 0 {
		return w.taken.Add(1) <= w.budget
	}
	return !t.After(w.end)
}

func runRequests(ctx context.Context, c config) (*RequestResult, error) {
	client := newClient(c.concurrency)
	w := newWindow(c)
	var cpuEnd time.Time
	if w.budget == 0 {
		cpuEnd = w.end
	}
	cpu := (&cpuMeter{procs: c.cpu}).run(w.start, cpuEnd)
	var errs errorLog
	samples := make([][]int64, c.concurrency)
	var wg sync.WaitGroup
	for i := range c.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []int64
			for ctx.Err() == nil {
				t0 := time.Now()
				if w.done(t0) {
					break
				}
				err := doRequest(client, c)
				d := time.Since(t0)
				if !w.take(t0) {
					continue
				}
				if err != nil {
					errs.add(err)
					continue
				}
				mine = append(mine, int64(d))
			}
			samples[i] = mine
		}()
	}
	wg.Wait()
	used, err := cpu()
	if err != nil {
		return nil, fmt.Errorf("cpu: %w", err)
	}
	end := time.Now()
	if w.budget == 0 && end.After(w.end) {
		end = w.end
	}
	var all []int64
	for _, s := range samples {
		all = append(all, s...)
	}
	secs := end.Sub(w.start).Seconds()
	r := &RequestResult{
		Label: c.label, Mode: c.mode, URL: c.url, Concurrency: c.concurrency,
		Seconds: secs, OK: int64(len(all)), Errors: errs.n.Load(), FirstError: errs.first,
		RPS:     float64(len(all)) / secs,
		Latency: summarise(all),
	}
	if n := len(all) + int(errs.n.Load()); used != nil && n > 0 {
		r.CPUUSPerRequest = map[string]float64{}
		for name, s := range used {
			r.CPUUSPerRequest[name] = s * 1e6 / float64(n)
		}
	}
	return r, nil
}

// doRequest sends one request and reads the whole reply, so its connection
// goes back to the pool.
func doRequest(client *http.Client, c config) error {
	req, err := newRequest(c)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
