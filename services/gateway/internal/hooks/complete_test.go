package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

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

func TestOnCompleteFailureLeavesEventAlone(t *testing.T) {
	e := newEngine(t, `
function on_complete(ev)
  ev.tags.half = "done"
  ev.request_body:set("secret", nil)
  ev.response.content = "scrubbed"
  error("second half failed")
end`, Options{})
	ev := &events.RequestCompleted{
		RequestBody: json.RawMessage(`{"secret":"sk-1"}`),
		Response:    &events.CapturedResponse{Content: "sk-2"},
	}
	err := e.OnComplete(context.Background(), ev)
	if !errors.Is(err, ErrScript) {
		t.Fatalf("error = %v, want ErrScript", err)
	}
	if ev.Tags != nil || string(ev.RequestBody) != `{"secret":"sk-1"}` || ev.Response.Content != "sk-2" {
		t.Errorf("event changed by a failed hook: %+v %s", ev, ev.RequestBody)
	}
}

// TestOnCompleteBodyMustBeJSON: a request body the event could not carry
// fails the hook, so the event is published as it was instead of being
// lost to an encoding error.
func TestOnCompleteBodyMustBeJSON(t *testing.T) {
	const orig = `{"prompt":"hi"}`
	tests := []struct {
		name, raw string
		wantErr   bool
		want      string
	}{
		{"not json", `not json`, true, orig},
		{"truncated json", `{"prompt":`, true, orig},
		{"two values", `{} {}`, true, orig},
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
			if tc.wantErr && ev.Tags != nil {
				t.Errorf("tags %v applied from a failed hook", ev.Tags)
			}
			if _, err := ev.Marshal(); err != nil {
				t.Errorf("event does not encode: %v", err)
			}
		})
	}
}
