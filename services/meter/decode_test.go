package meter

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// sampleEvent is an event as the gateway publishes it.
func sampleEvent(tb testing.TB) []byte {
	ev := &events.RequestCompleted{
		RequestID: "req_0a1b2c3d4e5f_1z", APIKey: "sk-b...0042", KeyID: "bench", KeyName: "bench", UserID: "bench-user",
		RequestBody: json.RawMessage(`{"model":"m1","messages":[{"role":"user","content":"say hello to the benchmark please"}],"max_tokens":16}`),
		Usage:       events.Usage{PromptTokens: 20, CompletionTokens: 16, TotalTokens: 36},
		IsStream:    false, Endpoint: "/v1/chat/completions", Timestamp: time.Date(2026, 11, 25, 21, 0, 0, 123456789, time.UTC),
		LatencyMS: 1, StatusCode: 200, Model: "m1", UsageSource: events.UsageSourceBackend, FinishReason: "stop",
		ClientIP: "127.0.0.1", BackendURL: "http://127.0.0.1:8000", QuotaPeriod: "monthly", Reservation: 4120,
	}
	b, err := ev.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestDecodeMeteredMatchesEncodingJSON checks that whenever decodeMetered
// answers, it answers what json.Unmarshal does.
func TestDecodeMeteredMatchesEncodingJSON(t *testing.T) {
	for _, s := range decodeSeeds(t) {
		checkDecodeMetered(t, []byte(s))
	}
	var ev meteredFields
	if !decodeMetered(sampleEvent(t), &ev) {
		t.Fatal("the gateway's own event took the slow path")
	}
}

func decodeSeeds(tb testing.TB) []string {
	return []string{
		string(sampleEvent(tb)),
		`{"request_id":"r1","user_id":"u1","key_id":"k1","model":"qwen","timestamp":"2026-11-25T01:02:03Z","usage":{"prompt_tokens":7,"completion_tokens":9,"total_tokens":16},"reservation":100,"unknown_field":true}`,
		`{"request_id":null,"usage":null,"reservation":null,"timestamp":null}`,
		`{"Request_ID":"x","request_id":"y"}`, `{"KEY_ID":"x"}`, `{"request_id":"a\u00e9\n"}`, `{"model":"\xff"}`,
		`{"reservation":-5}`, `{"reservation":1.5}`, `{"reservation":1e3}`, `{"reservation":"5"}`, `{"reservation":99999999999999999999}`,
		`{"timestamp":5}`, `{"timestamp":"yesterday"}`, `{"usage":[1]}`, `{"usage":{"prompt_tokens":1.5}}`,
		`{"usage":{"prompt_tokens":1},"usage":{"completion_tokens":2}}`, `{"model":"a","model":"b"}`,
		`[]`, `"x"`, `null`, `{`, `{"request_id":"r"`, `{} `, ` {"a":{"b":[1,{"c":"}"}]}} `, `{"request_body":{"x":"\"}"},"request_id":"r"}`,
		`{"ſ":1}`, `{"usage":{"Prompt_Tokens":3}}`, `{"usage":{"prompt_tokens":-1}}`, `{"usage":{"prompt_tokens":1,"prompt_tokens":null}}`,
		`{"usage":{"ſ":1,"x":[1,2]}}`, `{"usage":"x"}`, `{"usage":{}}`, `{"usage":{"total_tokens":"3"}}`, `{"model":5}`, `{"request_id":true}`,
		`{"request\u005fid":"x"}`, `{"usage":{"prompt\u005ftokens":5}}`, `{"reserv\u0061tion":7}`, `{"key\u005fid":"k"}`,
	}
}

func checkDecodeMetered(t *testing.T, data []byte) {
	var fast meteredFields
	if !decodeMetered(data, &fast) {
		return
	}
	var slow meteredFields
	if err := json.Unmarshal(data, &slow); err != nil {
		t.Fatalf("decodeMetered accepted %q, json.Unmarshal says %v", data, err)
	}
	if !reflect.DeepEqual(fast, slow) || !fast.Timestamp.Equal(slow.Timestamp) {
		t.Fatalf("decodeMetered(%q) = %+v, json.Unmarshal gives %+v", data, fast, slow)
	}
}

func FuzzDecodeMetered(f *testing.F) {
	for _, s := range decodeSeeds(f) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkDecodeMetered(t, data) })
}

// BenchmarkEntryFromEvent measures decoding one event as the gateway
// publishes it.
func BenchmarkEntryFromEvent(b *testing.B) {
	data := sampleEvent(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := entryFromEvent(data); err != nil {
			b.Fatal(err)
		}
	}
}
