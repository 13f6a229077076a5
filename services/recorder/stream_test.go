package recorder

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
)

func TestReadStream(t *testing.T) {
	js := eventstest.JetStream(t)
	ctx := context.Background()
	if got, err := ReadStream(ctx, js, Filter{}); err != nil || len(got) != 0 {
		t.Fatalf("empty stream: %v, %v", got, err)
	}
	for _, e := range []*events.RequestCompleted{
		event("a", "key1", 200), event("b", "key2", 429), event("c", "key1", 500), event("d", "key1", 200),
	} {
		if e.RequestID == "b" || e.RequestID == "d" {
			e.ClientRequestID = "retry-7" // a client that reused its id
		}
		publishEvent(t, js, e, e.RequestID)
	}
	for _, tt := range []struct {
		name string
		f    Filter
		want []string
	}{
		{"all", Filter{}, []string{"a", "b", "c", "d"}},
		{"request id", Filter{RequestID: "c"}, []string{"c"}},
		{"request id and key", Filter{RequestID: "b", KeyID: "key2"}, []string{"b"}},
		{"request id of another key", Filter{RequestID: "b", KeyID: "key1"}, nil},
		{"key", Filter{KeyID: "key1"}, []string{"a", "c", "d"}},
		{"status", Filter{Status: 429}, []string{"b"}},
		{"limit keeps the newest", Filter{Limit: 2}, []string{"c", "d"}},
		{"limit one", Filter{KeyID: "key1", Limit: 1}, []string{"d"}},
		{"since the future", Filter{Since: time.Now().Add(time.Hour)}, nil},
		{"unknown key", Filter{KeyID: "nobody"}, nil},
		{"unknown request", Filter{RequestID: "zzz"}, nil},
		{"client request id", Filter{ClientRequestID: "retry-7"}, []string{"b", "d"}},
		{"client request id and key", Filter{ClientRequestID: "retry-7", KeyID: "key1"}, []string{"d"}},
		{"client request id is not the gateway's", Filter{ClientRequestID: "a"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			start := time.Now()
			got, err := ReadStream(ctx, js, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if ids := requestIDs(got); !reflect.DeepEqual(ids, tt.want) {
				t.Fatalf("got %v, want %v", ids, tt.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("ReadStream took %s: it must not wait for new events", d)
			}
		})
	}
	got, err := ReadStream(ctx, js, Filter{RequestID: "a"})
	if err != nil || len(got) != 1 || got[0].Response == nil || got[0].Response.Content != "hello" || got[0].Usage.TotalTokens != 57 {
		t.Fatalf("ReadStream returned %+v, %v", got, err)
	}
}
