package hooks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

func TestOnCompleteSeesEventFields(t *testing.T) {
	e := newEngine(t, `
function on_complete(ev)
  assert(ev.request_id == "r1" and ev.model == "m" and ev.status_code == 200)
  assert(ev.usage.total_tokens == 30 and ev.is_stream == true)
  assert(ev.request_body:get("messages.1.content") == "hi")
  ev.tags.tokens = ev.usage.total_tokens
  ev.tags.old = nil
  ev.model = "ignored"
  ev.request_body:set_raw('{"redacted":true}')
end`, Options{})
	ev := &events.RequestCompleted{
		RequestID: "r1", Model: "m", StatusCode: 200, IsStream: true,
		Usage:       events.Usage{PromptTokens: 10, CompletionTokens: 20, TotalTokens: 30},
		RequestBody: json.RawMessage(`{"messages":[{"content":"hi"}]}`),
		Tags:        map[string]string{"old": "x"},
	}
	if err := e.OnComplete(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"tokens": "30"}; !reflect.DeepEqual(ev.Tags, want) {
		t.Errorf("tags = %v, want %v", ev.Tags, want)
	}
	if ev.Model != "m" || string(ev.RequestBody) != `{"redacted":true}` {
		t.Errorf("model %q, body %s", ev.Model, ev.RequestBody)
	}
}

// TestOnCompleteFailureFailsClosed: when on_complete fails, the event
// loses its request body and captured response, which the hook may have
// been meant to redact, keeps its accounting and the tags set so far, and
// says that the hook failed.
func TestOnCompleteFailureFailsClosed(t *testing.T) {
	const tagger = `function on_complete(ev) ev.tags.team = "search" end`
	tests := []struct {
		name    string
		src     string
		timeout time.Duration
		wantErr error
	}{
		{"error", `
function on_complete(ev)
  ev.tags.half = "done"
  ev.request_body:set("secret", nil)
  ev.response.content = "scrubbed"
  error("second half failed")
end`, 0, ErrScript},
		{"timeout", `
function on_complete(ev)
  ev.tags.half = "done"
  ev.request_body:set("secret", nil)
  while true do end
end`, 20 * time.Millisecond, ErrTimeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := New([]Script{{Name: "tag.lua", Source: tagger}, {Name: "redact.lua", Source: tc.src}},
				Options{Logger: quietLogger(), Timeout: cmp.Or(tc.timeout, testTimeout)})
			if err != nil {
				t.Fatal(err)
			}
			ev := &events.RequestCompleted{
				RequestID:   "r1",
				RequestBody: json.RawMessage(`{"secret":"jane@example.com"}`),
				Usage:       events.Usage{PromptTokens: 3, CompletionTokens: 4, TotalTokens: 7},
				StatusCode:  200,
				Response:    &events.CapturedResponse{Content: "sk-2"},
				Tags:        map[string]string{"env": "prod"},
			}
			err = e.OnComplete(context.Background(), ev)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			if string(ev.RequestBody) != "null" || ev.Response != nil {
				t.Errorf("content kept by a failed hook: body %s, response %+v", ev.RequestBody, ev.Response)
			}
			wantTags := map[string]string{"env": "prod", "team": "search", "half": "done", TagLuaError: HookComplete}
			if !reflect.DeepEqual(ev.Tags, wantTags) {
				t.Errorf("tags = %v, want %v", ev.Tags, wantTags)
			}
			if ev.RequestID != "r1" || ev.Usage.TotalTokens != 7 || ev.StatusCode != 200 {
				t.Errorf("accounting changed: %+v", ev)
			}
			if _, err := ev.Marshal(); err != nil {
				t.Errorf("event does not encode: %v", err)
			}
		})
	}
}

// TestOnCompleteBodyMustBeJSON: a request body the event could not carry
// fails the hook, so the event is published without it (null) instead of
// being lost to an encoding error.
func TestOnCompleteBodyMustBeJSON(t *testing.T) {
	const orig = `{"prompt":"hi"}`
	tests := []struct {
		name, raw string
		wantErr   bool
		want      string
	}{
		{"not json", `not json`, true, `null`},
		{"truncated json", `{"prompt":`, true, `null`},
		{"two values", `{} {}`, true, `null`},
		{"empty is null", ``, false, `null`},
		{"spaces are null", "  \n", false, `null`},
		{"json", ` {"redacted": true} `, false, ` {"redacted": true} `},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, `
function on_complete(ev)
  ev.tags.seen = "yes"
  ev.request_body:set_raw([==[`+tc.raw+`]==])
end`, Options{})
			ev := &events.RequestCompleted{RequestID: "r1", RequestBody: json.RawMessage(orig)}
			err := e.OnComplete(context.Background(), ev)
			if tc.wantErr != (err != nil) {
				t.Fatalf("error = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr && !errors.Is(err, ErrScript) {
				t.Errorf("error = %v, want ErrScript", err)
			}
			if string(ev.RequestBody) != tc.want {
				t.Errorf("request_body = %q, want %q", ev.RequestBody, tc.want)
			}
			if tc.wantErr && !reflect.DeepEqual(ev.Tags, map[string]string{"seen": "yes", TagLuaError: HookComplete}) {
				t.Errorf("tags = %v after a failed hook", ev.Tags)
			}
			if _, err := ev.Marshal(); err != nil {
				t.Errorf("event does not encode: %v", err)
			}
		})
	}
}

// TestOnCompleteTagsAreStrings: a tag value that is neither a string nor
// a number or boolean (tostring of a table is its address) fails the hook;
// the tags set before, in the table the scripts were given, are kept.
func TestOnCompleteTagsAreStrings(t *testing.T) {
	for _, tc := range []struct{ name, src string }{
		{"table value", `function on_complete(ev) ev.tags.n = 5 ev.tags.ok = true ev.tags.t = {1} end`},
		{"tags replaced by a string", `function on_complete(ev) ev.tags.n = 5 ev.tags.ok = true ev.tags = "notatable" end`},
		{"table as a name", `function on_complete(ev) ev.tags.n = 5 ev.tags.ok = true ev.tags[{}] = "x" end`},
		{"tags replaced, then an error", `function on_complete(ev) ev.tags.n = 5 ev.tags.ok = true ev.tags = "x" error("late") end`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, tc.src, Options{})
			ev := &events.RequestCompleted{RequestID: "r1", RequestBody: json.RawMessage(`{}`)}
			if err := e.OnComplete(context.Background(), ev); !errors.Is(err, ErrScript) {
				t.Fatalf("error = %v, want ErrScript", err)
			}
			want := map[string]string{"n": "5", "ok": "true", TagLuaError: HookComplete}
			if !reflect.DeepEqual(ev.Tags, want) {
				t.Errorf("tags = %v, want %v", ev.Tags, want)
			}
		})
	}
}
