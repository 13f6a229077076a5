package gateway

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// pieces is a response body that hands out its pieces one read each, as a
// backend connection may.
type pieces struct{ p [][]byte }

func (r *pieces) Read(b []byte) (int, error) {
	for len(r.p) > 0 && len(r.p[0]) == 0 {
		r.p = r.p[1:]
	}
	if len(r.p) == 0 {
		return 0, io.EOF
	}
	n := copy(b, r.p[0])
	r.p[0] = r.p[0][n:]
	return n, nil
}

func (r *pieces) Close() error { return nil }

// relayPieces relays body, read in the given pieces, as the reply to a
// chat request the gateway asked usage for (hideUsage), and returns what
// the client got and the exchange.
func relayPieces(t *testing.T, g *Gateway, path, ctype string, hide bool, parts ...[]byte) (string, *exchange) {
	t.Helper()
	req := httptest.NewRequest("POST", path, nil)
	rec := httptest.NewRecorder()
	x := g.begin(rec, req)
	x.hideUsage = hide
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {ctype}}, Body: &pieces{p: parts}}
	g.relay(context.Background(), rec, x, resp, replyFormat(x, resp))
	return rec.Body.String(), x
}

func relayGateway(t *testing.T) *Gateway {
	t.Helper()
	cfg, err := config.Parse([]byte("backends: [{url: \"http://127.0.0.1:1\"}]\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Config: cfg, Events: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestRelayEverySplit cuts an OpenAI stream (LF, CRLF or CR line ends, with
// a comment and a retry field) into two reads at every byte offset: the
// client always gets the stream without the usage chunk it did not ask for
// and without "usage":null, byte for byte, and the usage is always read.
func TestRelayEverySplit(t *testing.T) {
	g := relayGateway(t)
	const src = ": ping\n\nretry: 1000\n\n" +
		"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n" +
		"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n" +
		"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n" +
		"data: [DONE]\n\n"
	const want = ": ping\n\nretry: 1000\n\n" +
		"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n" +
		"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n" +
		"data: [DONE]\n\n"
	for _, eol := range []string{"\n", "\r\n", "\r"} {
		in := []byte(strings.ReplaceAll(src, "\n", eol))
		exp := strings.ReplaceAll(want, "\n", eol)
		for i := 0; i <= len(in); i++ {
			got, x := relayPieces(t, g, "/v1/chat/completions", "text/event-stream", true, bytes.Clone(in[:i]), bytes.Clone(in[i:]))
			if got != exp {
				t.Fatalf("eol %q, split at %d: client got\n%q\nwant\n%q", eol, i, got, exp)
			}
			r := x.result
			if !r.Found || r.PromptTokens != 7 || r.CompletionTokens != 2 || r.Text != "Hello" || x.errMsg != "" {
				t.Fatalf("eol %q, split at %d: result %+v err %q", eol, i, r, x.errMsg)
			}
		}
	}
}

// TestRelayEverySplitNDJSON cuts an Ollama stream into two reads at every
// byte offset: the client gets it byte for byte and its counts are read.
func TestRelayEverySplitNDJSON(t *testing.T) {
	g := relayGateway(t)
	const in = `{"model":"m","message":{"role":"assistant","content":"Hel"},"done":false}` + "\n" +
		`{"model":"m","message":{"role":"assistant","content":"lo"},"done":false}` + "\n" +
		`{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":7,"eval_count":2}` + "\n"
	for i := 0; i <= len(in); i++ {
		got, x := relayPieces(t, g, "/api/chat", "application/x-ndjson", false, []byte(in[:i]), []byte(in[i:]))
		if got != in {
			t.Fatalf("split at %d: client got %q", i, got)
		}
		if r := x.result; !r.Found || r.PromptTokens != 7 || r.CompletionTokens != 2 || r.Text != "Hello" {
			t.Fatalf("split at %d: result %+v", i, r)
		}
	}
}
