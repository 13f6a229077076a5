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
