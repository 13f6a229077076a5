package meter

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeMsg records what the meter did with a message; no broker involved.
type fakeMsg struct {
	jetstream.Msg
	data      []byte
	delivered uint64
	acked     bool
	nakDelay  time.Duration
	termed    string
}

func (m *fakeMsg) Data() []byte    { return m.data }
func (m *fakeMsg) Subject() string { return "llmproxy.v1.request.completed.k" }
func (m *fakeMsg) Ack() error      { m.acked = true; return nil }
func (m *fakeMsg) NakWithDelay(d time.Duration) error {
	m.nakDelay = d
	return nil
}
func (m *fakeMsg) Term() error                   { m.termed = "+TERM"; return nil }
func (m *fakeMsg) TermWithReason(r string) error { m.termed = "+TERM " + r; return nil }
func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: m.delivered}, nil
}

func eventMsg(t *testing.T, i int, delivered uint64) *fakeMsg {
	t.Helper()
	data, err := event(i).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return &fakeMsg{data: data, delivered: delivered}
}

// errStore fails every Apply.
type errStore struct{ ledger.Store }

func (errStore) Apply(context.Context, []ledger.Entry) (int, error) {
	return 0, errors.New("down")
}

// meterFor builds a Meter around store alone: process needs no broker.
func meterFor(t *testing.T, store ledger.Store) *Meter {
	t.Helper()
	o := Options{NakDelay: 100 * time.Millisecond, MaxNakDelay: time.Second}.withDefaults()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Meter{store: store, opts: o, log: o.Logger, m: m}
}

func TestProcessAcksAfterApplyAndTermsPoison(t *testing.T) {
	store := openStore(t)
	mt := meterFor(t, store)
	ok1, ok2, dup := eventMsg(t, 1, 1), eventMsg(t, 2, 1), eventMsg(t, 1, 2)
	bad := &fakeMsg{data: []byte(`{"request_id":`), delivered: 1}
	refused := event(3)
	refused.StatusCode, refused.Usage, refused.Reservation = 429, events.Usage{}, 0
	data, err := refused.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	skip := &fakeMsg{data: data, delivered: 1}
	b := newBatch(8)
	b.msgs = append(b.msgs, ok1, bad, ok2, dup, skip)
	mt.process(context.Background(), b)

	for i, m := range []*fakeMsg{ok1, ok2, dup, skip} {
		if !m.acked || m.termed != "" || m.nakDelay != 0 {
			t.Fatalf("msg %d: acked=%v termed=%q nak=%v; want acked only", i, m.acked, m.termed, m.nakDelay)
		}
	}
	// A plain +TERM: servers before 2.10.4 ignore one with a reason.
	if bad.acked || bad.termed != "+TERM" {
		t.Fatalf("poison: acked=%v termed=%q; want a plain +TERM", bad.acked, bad.termed)
	}
	if a, d, s, p := testutil.ToFloat64(mt.m.applied), testutil.ToFloat64(mt.m.duplicate), testutil.ToFloat64(mt.m.skipped), testutil.ToFloat64(mt.m.poison); a != 2 || d != 1 || s != 1 || p != 1 {
		t.Fatalf("applied/duplicate/skipped/poison = %v/%v/%v/%v, want 2/1/1/1", a, d, s, p)
	}
	tot, _ := store.Usage(context.Background(), event(1).KeyID, ledger.Never, testTime)
	if tot.Requests != 1 {
		t.Fatalf("key %s: %d requests, want 1", event(1).KeyID, tot.Requests)
	}
}

func TestProcessNaksWithGrowingDelayOnStoreError(t *testing.T) {
	mt := meterFor(t, errStore{})
	for _, tc := range []struct {
		delivered uint64
		want      time.Duration
	}{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {4, 800 * time.Millisecond}, {30, time.Second}} {
		m := eventMsg(t, 1, tc.delivered)
		b := newBatch(1)
		b.msgs = append(b.msgs, m)
		mt.process(context.Background(), b)
		if m.acked || m.termed != "" || m.nakDelay != tc.want {
			t.Fatalf("delivery %d: acked=%v termed=%q nak=%v; want nak after %v", tc.delivered, m.acked, m.termed, m.nakDelay, tc.want)
		}
	}
	if got := testutil.ToFloat64(mt.m.applyErrors); got != 4 {
		t.Fatalf("apply errors = %v, want 4", got)
	}
}

// TestPoisonLinesAreRateLimited: a run of poison events is one log line
// (the metric counts each); the next line after the interval says how many
// were left out.
func TestPoisonLinesAreRateLimited(t *testing.T) {
	var buf bytes.Buffer
	mt := meterFor(t, openStore(t))
	mt.log = slog.New(slog.NewTextHandler(&buf, nil))
	b := newBatch(8)
	for range 5 {
		b.msgs = append(b.msgs, &fakeMsg{data: []byte(`{`), delivered: 1})
	}
	mt.process(context.Background(), b)
	if n := strings.Count(buf.String(), "poison event terminated"); n != 1 {
		t.Fatalf("%d lines for 5 poison events:\n%s", n, buf.String())
	}
	if p := testutil.ToFloat64(mt.m.poison); p != 5 {
		t.Fatalf("poison = %v, want 5", p)
	}
	// The interval has passed.
	mt.logLast["meter: poison event terminated"] = time.Now().Add(-logInterval)
	b.msgs = append(b.msgs[:0], &fakeMsg{data: []byte(`{`), delivered: 1})
	mt.process(context.Background(), b)
	if !strings.Contains(buf.String(), "suppressed=4") {
		t.Fatalf("the next line does not say 4 were left out:\n%s", buf.String())
	}
}
