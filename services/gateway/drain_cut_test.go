package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// TestCutOpenRequestsEndsThemInBand: at the drain deadline a stream under
// way ends with an error event saying the server cut it, and a request
// still waiting for its reply head gets a 503 server_shutdown, both before
// their connections are closed; each is recorded as cut by the server.
func TestCutOpenRequestsEndsThemInBand(t *testing.T) {
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Slow-Head") != "" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"one "}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer backend.Close()
	defer close(release) // before the backend closes: its handlers wait for it
	sink := newSink()
	g, err := New(Options{Config: parseConfig(t, fmt.Sprintf("backends: [{url: %q}]\n", backend.URL)), Events: sink})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	defer func() { _ = g.Close(context.Background()) }()
	srv := httptest.NewUnstartedServer(g.Handler())
	srv.Config.BaseContext = g.BaseContext
	srv.Start()
	defer srv.Close()

	post := func(hdr string) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
		if hdr != "" {
			req.Header.Set(hdr, "1")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	stream := post("")
	defer stream.Body.Close()
	br := bufio.NewReader(stream.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "one") {
		t.Fatalf("first event: %q %v", line, err)
	}
	waiting := make(chan *http.Response, 1)
	go func() { waiting <- post("X-Slow-Head") }()
	for g.inflight.Load() < 2 {
		time.Sleep(time.Millisecond)
	}

	g.CutOpenRequests(time.Second)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), `"code":"server_shutdown"`) || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") {
		t.Fatalf("the stream's end: %q, want the server_shutdown error event and [DONE]", rest)
	}
	resp := <-waiting
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), `"code":"server_shutdown"`) {
		t.Fatalf("the request waiting for its head: %d %q", resp.StatusCode, body)
	}
	for _, ev := range []*events.RequestCompleted{sink.next(t), sink.next(t)} {
		if ev.Error != "server_shutdown" {
			t.Errorf("event %s: error %q, want server_shutdown", ev.RequestID, ev.Error)
		}
	}
}
