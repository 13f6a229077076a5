package meter

import (
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

func TestEntryFromEvent(t *testing.T) {
	ts := time.Date(2026, 11, 25, 1, 2, 3, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		body    string
		want    ledger.Entry
		wantErr string
	}{
		{
			name: "full event",
			body: `{"schema":"llmproxy.request.completed/v1","request_id":"r1","user_id":"u1","key_id":"k1","model":"qwen","timestamp":"2026-11-25T01:02:03Z","usage":{"prompt_tokens":7,"completion_tokens":9,"total_tokens":16},"reservation":100,"latency_ms":90500,"unknown_field":true}`,
			// A request's tokens count in the TPM window when it ended.
			want: ledger.Entry{RequestID: "r1", KeyID: "k1", UserID: "u1", Model: "qwen", Time: ts, Ended: ts.Add(90500 * time.Millisecond), PromptTokens: 7, CompletionTokens: 9, Reserved: 100},
		},
		{
			name: "no key id counts as anonymous",
			body: `{"request_id":"r2","timestamp":"2026-11-25T01:02:03Z","usage":{"prompt_tokens":1}}`,
			want: ledger.Entry{RequestID: "r2", KeyID: events.AnonymousKeyID, Time: ts, Ended: ts, PromptTokens: 1},
		},
		{
			name:    "refused before a backend: nothing to apply",
			body:    `{"request_id":"r6","key_id":"k","timestamp":"2026-11-25T01:02:03Z","status_code":429,"backend_url":"","usage":{"prompt_tokens":0,"completion_tokens":0},"reservation":0}`,
			wantErr: "nothing to apply",
		},
		{
			name: "a backend failure without tokens still counts a request",
			body: `{"request_id":"r7","key_id":"k","timestamp":"2026-11-25T01:02:03Z","status_code":502,"backend_url":"http://b","usage":{}}`,
			want: ledger.Entry{RequestID: "r7", KeyID: "k", Time: ts, Ended: ts},
		},
		// latency_ms only places the tokens in the TPM window: read
		// leniently, bounded, never a reason to refuse the event.
		{
			name: "a fractional latency",
			body: `{"request_id":"r8","key_id":"k","timestamp":"2026-11-25T01:02:03Z","latency_ms":12.5,"usage":{"prompt_tokens":1}}`,
			want: ledger.Entry{RequestID: "r8", KeyID: "k", Time: ts, Ended: ts.Add(12500 * time.Microsecond), PromptTokens: 1},
		},
		{
			name: "a latency that is no number",
			body: `{"request_id":"r9","key_id":"k","timestamp":"2026-11-25T01:02:03Z","latency_ms":"slow","usage":{"prompt_tokens":1}}`,
			want: ledger.Entry{RequestID: "r9", KeyID: "k", Time: ts, Ended: ts, PromptTokens: 1},
		},
		{
			name: "a latency past the bound",
			body: `{"request_id":"r10","key_id":"k","timestamp":"2026-11-25T01:02:03Z","latency_ms":99999999999999999,"usage":{"prompt_tokens":1}}`,
			want: ledger.Entry{RequestID: "r10", KeyID: "k", Time: ts, Ended: ts.Add(24 * time.Hour), PromptTokens: 1},
		},
		{
			name: "a negative latency",
			body: `{"request_id":"r11","key_id":"k","timestamp":"2026-11-25T01:02:03Z","latency_ms":-5,"usage":{"prompt_tokens":1}}`,
			want: ledger.Entry{RequestID: "r11", KeyID: "k", Time: ts, Ended: ts, PromptTokens: 1},
		},
		{name: "not JSON", body: `not json`, wantErr: "decode event"},
		{name: "truncated", body: `{"request_id":"r3"`, wantErr: "decode event"},
		{name: "no request id", body: `{"key_id":"k","timestamp":"2026-11-25T01:02:03Z"}`, wantErr: "empty request id"},
		{name: "no time", body: `{"request_id":"r4","key_id":"k"}`, wantErr: "zero time"},
		{name: "negative tokens", body: `{"request_id":"r5","key_id":"k","timestamp":"2026-11-25T01:02:03Z","usage":{"completion_tokens":-1}}`, wantErr: "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := entryFromEvent([]byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.Time.Equal(tc.want.Time) {
				t.Fatalf("time %v, want %v", got.Time, tc.want.Time)
			}
			if !got.Ended.Equal(tc.want.Ended) {
				t.Fatalf("ended %v, want %v", got.Ended, tc.want.Ended)
			}
			got.Time, got.Ended = tc.want.Time, tc.want.Ended
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func FuzzEntryFromEvent(f *testing.F) {
	f.Add([]byte(`{"request_id":"r","key_id":"k","timestamp":"2026-11-25T01:02:03Z","usage":{"prompt_tokens":1}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := entryFromEvent(b)
		if err != nil {
			return
		}
		if e.Validate() != nil || e.PromptTokens < 0 || e.CompletionTokens < 0 || e.Reserved < 0 {
			t.Fatalf("accepted an entry a store would refuse: %+v", e)
		}
	})
}

// TestMeteredFieldsMatchEvent guards the field names the meter decodes
// against the event contract.
func TestMeteredFieldsMatchEvent(t *testing.T) {
	ev := events.RequestCompleted{
		RequestID: "r", UserID: "u", KeyID: "k", Model: "m",
		Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Reservation: 9, LatencyMS: 1500,
		Usage: events.Usage{PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3},
	}
	data, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := entryFromEvent(data)
	if err != nil {
		t.Fatal(err)
	}
	want := ledger.Entry{RequestID: "r", KeyID: "k", UserID: "u", Model: "m", Time: ev.Timestamp, Ended: ev.Timestamp.Add(1500 * time.Millisecond), PromptTokens: 1, CompletionTokens: 2, Reserved: 9}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
