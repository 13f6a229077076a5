package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// TestHTTP2ClientGetsEachEventAsItComes: behind an HTTP/2 front (the
// gateway's handler served over TLS with h2), each event reaches the
// client before the backend sends the next, the usage chunk the client did
// not ask for is not relayed, and the backend's usage is read.
func TestHTTP2ClientGetsEachEventAsItComes(t *testing.T) {
	next := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w%d \"}}],\"usage\":null}\n\n", i)
			w.(http.Flusher).Flush()
			<-next
		}
		fmt.Fprint(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\ndata: [DONE]\n\n")
	}))
	defer backend.Close()
	defer close(next)
	gw, s := newTestGateway(t, backend.URL, "")
	h2 := httptest.NewUnstartedServer(gw.Config.Handler)
	h2.EnableHTTP2 = true
	h2.StartTLS()
	defer h2.Close()

	req, _ := http.NewRequest("POST", h2.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := h2.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("served over %s; want HTTP/2", resp.Proto)
	}
	br := bufio.NewReader(resp.Body)
	var got strings.Builder
	for i := range 3 {
		// The backend holds event i+1 until the client has event i.
		line, err := br.ReadString('\n')
		blank, err2 := br.ReadString('\n')
		if err != nil || err2 != nil || blank != "\n" || !strings.Contains(line, fmt.Sprintf(`"w%d "`, i)) {
			t.Fatalf("event %d: %q %v", i, line, err)
		}
		got.WriteString(line + blank)
		next <- struct{}{}
	}
	rest, _ := br.ReadString(0)
	got.WriteString(rest)
	if strings.Contains(got.String(), "usage") || !strings.HasSuffix(got.String(), "data: [DONE]\n\n") {
		t.Fatalf("client got %q", got.String())
	}
	ev := s.next(t)
	if ev.UsageSource != "backend" || ev.Usage.PromptTokens != 5 || ev.Usage.CompletionTokens != 3 {
		t.Fatalf("event usage %+v (%s)", ev.Usage, ev.UsageSource)
	}
}

// TestHTTP2RefusalKeepsTheConnection: over HTTP/2 a request refused before
// its body is read is answered on its own stream; the connection, which
// other requests share, is not closed (a Connection: close there would be
// a GOAWAY for all of them).
func TestHTTP2RefusalKeepsTheConnection(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	gw, _ := newTestGateway(t, backend.URL, "")
	h2 := httptest.NewUnstartedServer(gw.Config.Handler)
	h2.EnableHTTP2 = true
	h2.StartTLS()
	defer h2.Close()
	client := h2.Client()
	var conns []string
	for _, key := range []string{"sk-not-a-key-0000", testKey} {
		req, _ := http.NewRequest("POST", h2.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		var addr string
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(ci httptrace.GotConnInfo) { addr = ci.Conn.LocalAddr().String() },
		}))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("served over %s; want HTTP/2", resp.Proto)
		}
		conns = append(conns, addr)
	}
	if conns[0] != conns[1] {
		t.Fatalf("the request after a refusal used a new connection (%s, then %s)", conns[0], conns[1])
	}
}

// TestHTTP2StalledStreamIsCutBesideARead: on HTTP/2 a stream whose client
// stopped reading is cut by send_timeout though the client keeps reading
// another stream of the same connection, whose acknowledged bytes are not
// that stream's progress.
func TestHTTP2StalledStreamIsCutBesideARead(t *testing.T) {
	chunk := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + strings.Repeat("word ", 2000) + "\"}}]}\n\n"
	cancelled := make(chan string, 4)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		name := "read"
		if strings.Contains(string(b), "STALL") {
			name = "stalled"
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for r.Context().Err() == nil {
			if _, err := io.WriteString(w, chunk); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			time.Sleep(2 * time.Millisecond)
		}
		cancelled <- name
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nserver: {send_timeout: 300ms}\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Config: cfg, Events: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(t.Context())
	srv := httptest.NewUnstartedServer(g.Handler())
	srv.Config.ConnContext = g.ConnContext
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	send := func(tag string) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1","stream":true,"messages":[{"role":"user","content":"`+tag+`"}]}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := srv.Client().Do(req)
		if err != nil || resp.ProtoMajor != 2 {
			t.Fatalf("%s: %v %v", tag, resp, err)
		}
		return resp
	}
	stalled := send("STALL") // never read
	defer stalled.Body.Close()
	read := send("READ")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer read.Body.Close()
		buf := make([]byte, 16<<10)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if _, err := read.Body.Read(buf); err != nil {
				return
			}
		}
	}()
	select {
	case name := <-cancelled:
		if name != "stalled" {
			t.Fatalf("the %s stream was cut first", name)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("the stalled stream was not cut in 6 s (send_timeout 300ms) while another stream of its connection was read")
	}
}
