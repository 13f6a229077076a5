package gateway

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestEventCarriesTheClientsBody: the backend is asked for a usage chunk
// the client did not request, but the event's request_body is the body the
// client sent, without the stream_options the gateway added.
func TestEventCarriesTheClientsBody(t *testing.T) {
	var sent []byte
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"+
			"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}\n\ndata: [DONE]\n\n")
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	body := `{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !bytes.Contains(sent, []byte(`"include_usage":true`)) {
		t.Fatalf("the backend was not asked for usage: %s", sent)
	}
	ev := s.next(t)
	if string(ev.RequestBody) != body {
		t.Fatalf("event request_body %s, want the client's %s", ev.RequestBody, body)
	}
	if ev.Usage.TotalTokens != 5 {
		t.Fatalf("usage %+v", ev.Usage)
	}
}
