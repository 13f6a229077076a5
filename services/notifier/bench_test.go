package notifier

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
)

// BenchmarkDeliveries measures end-to-end deliveries per second to one fast
// receiver with the default concurrency: events are published first, then
// the clock runs from the notifier's start until the receiver has them all.
func BenchmarkDeliveries(b *testing.B) {
	js := eventstest.JetStream(b)
	var got atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		got.Add(1)
	}))
	b.Cleanup(srv.Close)
	publish(b, js, "req", b.N)

	opts := testOptions()
	opts.Concurrency = 0 // default
	b.ResetTimer()
	start := time.Now()
	runNotifier(b, js, []Endpoint{{Name: "fast", URL: srv.URL}}, opts)
	waitFor(b, 5*time.Minute, "all deliveries", func() bool { return got.Load() >= int64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "deliveries/s")
}
