package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// StreamResult is the output of stream mode.
type StreamResult struct {
	Label       string  `json:"label,omitempty"`
	Mode        string  `json:"mode"`
	URL         string  `json:"url"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"`
	Streams     int64   `json:"streams"`
	Events      int64   `json:"events"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	// TTFT runs from sending the request to reading the first event that
	// carries mock_sent_ns.
	TTFT Dist `json:"ttft"`
	// Lag is each event's receive time minus its mock_sent_ns.
	Lag Dist `json:"event_lag"`
	// CPUUSPerEvent is, per --cpu name, the CPU time its processes used in
	// the measured window divided by the events measured (µs).
	CPUUSPerEvent map[string]float64 `json:"cpu_us_per_event,omitempty"`
}

var sentKey = []byte(`"mock_sent_ns":`)

func runStreams(ctx context.Context, c config) (*StreamResult, error) {
	client := newClient(c.concurrency)
	w := newWindow(c)
	var cpuEnd time.Time
	if w.budget == 0 {
		cpuEnd = w.end
	}
	cpu := (&cpuMeter{procs: c.cpu}).run(w.start, cpuEnd)
	var errs errorLog
	ttfts := make([][]int64, c.concurrency)
	lags := make([][]int64, c.concurrency)
	var wg sync.WaitGroup
	for i := range c.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReaderSize(nil, 16<<10)
			var myTTFT, myLag []int64
			if c.stagger > 0 {
				select {
				case <-time.After(c.stagger * time.Duration(i) / time.Duration(c.concurrency)):
				case <-ctx.Done():
				}
			}
			for ctx.Err() == nil {
				t0 := time.Now()
				if w.done(t0) {
					break
				}
				measured := !t0.Before(w.start)
				ttft, lagsOut, err := readStream(client, c, br, t0, measured)
				if !w.take(t0) {
					continue
				}
				if err != nil {
					errs.add(err)
					continue
				}
				myTTFT = append(myTTFT, ttft)
				myLag = append(myLag, lagsOut...)
			}
			ttfts[i], lags[i] = myTTFT, myLag
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
	var allTTFT, allLag []int64
	for i := range ttfts {
		allTTFT = append(allTTFT, ttfts[i]...)
		allLag = append(allLag, lags[i]...)
	}
	r := &StreamResult{
		Label: c.label, Mode: c.mode, URL: c.url, Concurrency: c.concurrency,
		Seconds: end.Sub(w.start).Seconds(), Streams: int64(len(allTTFT)), Events: int64(len(allLag)),
		Errors: errs.n.Load(), FirstError: errs.first,
		TTFT: summarise(allTTFT), Lag: summarise(allLag),
	}
	if used != nil && len(allLag) > 0 {
		r.CPUUSPerEvent = map[string]float64{}
		for name, s := range used {
			r.CPUUSPerEvent[name] = s * 1e6 / float64(len(allLag))
		}
	}
	return r, nil
}

// readStream sends one stream request and reads it to the end, returning
// its TTFT and, when keep is set, the lag of every stamped event.
func readStream(client *http.Client, c config, br *bufio.Reader, t0 time.Time, keep bool) (int64, []int64, error) {
	req, err := newRequest(c)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		_, _ = io.Copy(io.Discard, resp.Body)
		return 0, nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	br.Reset(resp.Body)
	var ttft int64 = -1
	var lagsOut []int64
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			now := time.Now()
			if sent, ok := sentStamp(line); ok {
				if ttft < 0 {
					ttft = int64(now.Sub(t0))
				}
				if keep {
					lagsOut = append(lagsOut, now.UnixNano()-sent)
				}
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, nil, err
		}
	}
	if ttft < 0 {
		return 0, nil, errors.New("stream carried no mock_sent_ns event")
	}
	return ttft, lagsOut, nil
}

// sentStamp finds "mock_sent_ns":<digits> in one line.
func sentStamp(line []byte) (int64, bool) {
	i := bytes.Index(line, sentKey)
	if i < 0 {
		return 0, false
	}
	rest := line[i+len(sentKey):]
	j := 0
	for j < len(rest) && (rest[j] == ' ') {
		j++
	}
	k := j
	for k < len(rest) && rest[k] >= '0' && rest[k] <= '9' {
		k++
	}
	v, err := strconv.ParseInt(string(rest[j:k]), 10, 64)
	return v, err == nil
}
