package publish

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// accounting is what fitEvent must never change.
func accounting(ev *events.RequestCompleted) events.RequestCompleted {
	a := *ev
	a.RequestBody, a.Response, a.Truncated = nil, nil, false
	return a
}

func TestFitEvent(t *testing.T) {
	body := func(n int) json.RawMessage { return json.RawMessage(`{"prompt":"` + strings.Repeat("p", n) + `"}`) }
	tests := []struct {
		name  string
		body  json.RawMessage
		resp  *events.CapturedResponse
		limit int
		// wantBody is the request body left ("null" when dropped);
		// wantContent the length of the response content left (-1: no
		// response).
		wantBody    string
		wantContent int
	}{
		{name: "body dropped", body: body(100_000), limit: 4096, wantBody: "null", wantContent: -1},
		{name: "response cut, body kept", body: body(100), resp: &events.CapturedResponse{Content: strings.Repeat("r", 100_000)},
			limit: 8192, wantBody: string(body(100)), wantContent: 8192},
		{name: "body first when larger", body: body(50_000), resp: &events.CapturedResponse{Content: strings.Repeat("r", 2000)},
			limit: 4096, wantBody: "null", wantContent: 2000},
		{name: "both", body: body(50_000), resp: &events.CapturedResponse{Content: strings.Repeat("r", 40_000)},
			limit: 2048, wantBody: "null", wantContent: 2048},
		{name: "escaped content", body: body(10), resp: &events.CapturedResponse{Content: strings.Repeat("\x01é<", 10_000)},
			limit: 4096, wantBody: string(body(10)), wantContent: 4096},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := event(7)
			ev.UserID, ev.KeyName, ev.APIKey, ev.StatusCode, ev.Reservation = "u1", "team", "sk-…abcd", 200, 4096
			ev.Tags = map[string]string{"team": "a"}
			ev.RequestBody, ev.Response = tc.body, tc.resp
			data, err := ev.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			out, err := fitEvent(data, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) > tc.limit {
				t.Fatalf("fitted event is %d bytes, limit %d", len(out), tc.limit)
			}
			got, err := events.Unmarshal(out)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Truncated {
				t.Error("fitted event not marked truncated")
			}
			if got, want := accounting(&got), accounting(ev); !jsonEqual(t, got, want) {
				t.Errorf("fitted event changed more than its content:\n got  %+v\n want %+v", got, want)
			}
			if string(got.RequestBody) != tc.wantBody {
				t.Errorf("request_body %.40s…, want %.40s…", got.RequestBody, tc.wantBody)
			}
			switch {
			case tc.wantContent < 0:
				if got.Response != nil {
					t.Errorf("response %+v appeared", got.Response)
				}
			case got.Response == nil:
				t.Error("response lost")
			default:
				c := got.Response.Content
				if !utf8.ValidString(c) || !strings.HasPrefix(tc.resp.Content, c) {
					t.Errorf("content is not a whole-character prefix of the original")
				}
				if len(c) > tc.wantContent || len(c) < tc.wantContent/8 {
					t.Errorf("content %d bytes, want about %d at most", len(c), tc.wantContent)
				}
				if cut := len(c) < len(tc.resp.Content); got.Response.Truncated != cut {
					t.Errorf("response.truncated = %v, content cut %v", got.Response.Truncated, cut)
				}
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b events.RequestCompleted) bool {
	t.Helper()
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return string(x) == string(y)
}

func TestFitEventTooLarge(t *testing.T) {
	ev := event(1)
	ev.RequestBody = json.RawMessage(`{"prompt":"` + strings.Repeat("p", 10_000) + `"}`)
	ev.Tags = map[string]string{"huge": strings.Repeat("t", 10_000)}
	data, _ := ev.Marshal()
	if _, err := fitEvent(data, 4096); !errors.Is(err, errEventTooLarge) {
		t.Fatalf("error %v, want errEventTooLarge", err)
	}
	if _, err := fitEvent([]byte("not json"), 4096); err == nil {
		t.Fatal("no error for a record that is not an event")
	}
}

func TestMaxEventBytes(t *testing.T) {
	id := "req-000001"
	if got := maxEventBytes(0, id); got != 0 {
		t.Errorf("unknown max payload: %d, want 0 (no bound)", got)
	}
	header := int64(len("NATS/1.0\r\nNats-Msg-Id: " + id + "\r\nNats-Expected-Stream: LLMPROXY\r\n\r\n"))
	if got, want := maxEventBytes(1<<20, id), 1<<20-header-dlqRoom; got != want {
		t.Errorf("1 MiB: %d, want %d", got, want)
	}
	// A small max_payload keeps most of its room for the event.
	if got, want := maxEventBytes(4096, id), 4096-header-512; got != want {
		t.Errorf("4 KiB: %d, want %d", got, want)
	}
}

func TestCutUTF8(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"héllo", 2, "h"},
		{"héllo", 3, "hé"},
		{"héllo", 99, "héllo"},
		{"héllo", 0, ""},
		{"héllo", -3, ""},
		{"€€", 4, "€"},
	} {
		if got := cutUTF8(tc.s, tc.n); got != tc.want {
			t.Errorf("cutUTF8(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}
