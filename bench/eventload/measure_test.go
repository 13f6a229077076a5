package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

const exposition = `# HELP llmproxy_webhook_deliveries_total Deliveries.
# TYPE llmproxy_webhook_deliveries_total counter
llmproxy_webhook_deliveries_total{endpoint="sink",outcome="success"} 1200
llmproxy_webhook_deliveries_total{endpoint="other",outcome="success"} 34
llmproxy_webhook_deliveries_total{endpoint="sink",outcome="retry"} 5
llmproxy_meter_events_applied_total 5e+04
llmproxy_meter_events_applied_total_other 9
`

func TestReadCounter(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, exposition)
	}))
	defer srv.Close()
	tests := []struct {
		name, metric, match string
		want                float64
	}{
		{"plain counter", "llmproxy_meter_events_applied_total", "", 50000},
		{"all series summed", "llmproxy_webhook_deliveries_total", "", 1239},
		{"filtered by label", "llmproxy_webhook_deliveries_total", `outcome="success"`, 1234},
		{"absent", "llmproxy_nothing_total", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readCounter(srv.URL, tt.metric, tt.match)
			if err != nil || got != tt.want {
				t.Fatalf("readCounter = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// TestMeasureBacklog: the backlog figure counts from the counter's first
// move, and refuses a run too short to time.
func TestMeasureBacklog(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		// 0, 0, then 100 more per poll up to 1000.
		v := min(max(calls.Add(1)-2, 0)*100, 1000)
		fmt.Fprintf(w, "llmproxy_meter_events_applied_total %d\n", v)
	}))
	defer srv.Close()
	if err := measureBacklog(context.Background(), "t", 1000, srv.URL, "llmproxy_meter_events_applied_total", ""); err != nil {
		t.Fatal(err)
	}
	if c := calls.Load(); c < 12 {
		t.Fatalf("finished after %d polls, before the counter reached 1000", c)
	}

	jump := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "llmproxy_meter_events_applied_total 1000\n")
	}))
	defer jump.Close()
	if err := measureBacklog(context.Background(), "t", 1000, jump.URL, "llmproxy_meter_events_applied_total", ""); err == nil {
		t.Fatal("a counter already at n was timed")
	}
}
