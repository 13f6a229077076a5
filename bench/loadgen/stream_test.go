package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

func TestSentStamp(t *testing.T) {
	tests := []struct {
		name string
		line string
		want int64
		ok   bool
	}{
		{"openai chunk", `data: {"id":"x","choices":[],"mock_sent_ns":1764100000123456789}` + "\n", 1764100000123456789, true},
		{"tgi no space", `data:{"token":{"id":1},"mock_sent_ns":42}` + "\n", 42, true},
		{"space after colon", `{"done":false,"mock_sent_ns": 7}` + "\n", 7, true},
		{"done marker", "data: [DONE]\n", 0, false},
		{"event line", "event: message_start\n", 0, false},
		{"empty stamp", `{"mock_sent_ns":}`, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := sentStamp([]byte(tt.line))
			if got != tt.want || ok != tt.ok {
				t.Fatalf("sentStamp(%q) = %d, %v; want %d, %v", tt.line, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestSummarise(t *testing.T) {
	var ns []int64
	for i := 1; i <= 100; i++ {
		ns = append(ns, int64(i)*int64(time.Microsecond))
	}
	d := summarise(ns)
	if d.N != 100 || d.P50 != 50 || d.P99 != 99 || d.Max != 100 || d.Mean != 50.5 {
		t.Fatalf("summarise = %+v", d)
	}
	if (summarise(nil) != Dist{}) {
		t.Fatal("summarise(nil) is not zero")
	}
}

// firstArrivals runs 4 stream workers against a backend that holds each
// stream 600 ms, so each worker sends one request in the run, and returns
// how far apart the 4 requests arrived.
func firstArrivals(t *testing.T, stagger time.Duration) time.Duration {
	t.Helper()
	var mu sync.Mutex
	var arrived []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrived = append(arrived, time.Now())
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: {\"mock_sent_ns\":%d}\n\n", time.Now().UnixNano())
		w.(http.Flusher).Flush()
		time.Sleep(600 * time.Millisecond)
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer srv.Close()
	c := config{url: srv.URL, mode: "stream", concurrency: 4, duration: 500 * time.Millisecond, stagger: stagger}
	if _, err := runStreams(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(arrived) != 4 {
		t.Fatalf("%d requests, want one per worker", len(arrived))
	}
	return arrived[3].Sub(arrived[0])
}

func TestStaggerSpreadsFirstStreams(t *testing.T) {
	// Evenly over 400 ms: the last worker starts 300 ms after the first.
	// Without the stagger all four start at once.
	if d := firstArrivals(t, 400*time.Millisecond); d < 250*time.Millisecond {
		t.Fatalf("with a 400 ms stagger the 4 streams began only %s apart", d)
	}
}
