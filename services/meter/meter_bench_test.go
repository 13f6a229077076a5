package meter

import (
	"context"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
)

// BenchmarkMeter measures events per second through one meter into the
// local (bbolt) ledger: b.N events are published first, then the time to
// apply and ack all of them is measured.
func BenchmarkMeter(b *testing.B) {
	js := eventstest.Connect(b, eventstest.Server(b, -1))
	store := openStore(b)
	pub := publisher{b, js}
	for i := range b.N {
		ev := event(i)
		pub.event(ev, ev.RequestID)
		if i%4096 == 0 {
			pub.wait()
		}
	}
	pub.wait()
	m := newMeter(b, js, store, Options{})
	b.ResetTimer()
	start := time.Now()
	stop := run(b, m)
	for {
		c, err := js.Consumer(context.Background(), "LLMPROXY", DefaultDurable)
		if err == nil && c.CachedInfo().NumPending == 0 && c.CachedInfo().NumAckPending == 0 && c.CachedInfo().AckFloor.Consumer >= uint64(b.N) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}
