package publish

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// BenchmarkPublish measures what Publish costs the request path, with a
// live embedded JetStream behind the publisher.
//
//   - handoff: the queue has room (the normal case): a channel send.
//   - saturated: callers outrun the writer and the sender, the queue fills
//     and Publish encodes and appends to the outbox itself in proportion.
func BenchmarkPublish(b *testing.B) {
	for _, bc := range []struct {
		name  string
		queue func(n int) int
	}{
		{"handoff", func(n int) int { return n + 1 }},
		{"saturated", func(int) int { return 0 }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv := startNATS(b, b.TempDir(), -1)
			defer srv.Shutdown()
			js := connect(b, srv.ClientURL())
			p := newPublisher(b, js, b.TempDir(), Options{QueueSize: bc.queue(b.N)})
			// The events are built beforehand: only Publish is measured.
			evs := make([]events.RequestCompleted, b.N)
			for i := range evs {
				evs[i] = *event(i)
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					p.Publish(&evs[next.Add(1)-1])
				}
			})
			b.StopTimer()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := p.Close(ctx); err != nil {
				b.Fatal(err)
			}
		})
	}
}
