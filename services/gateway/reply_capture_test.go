package gateway

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestReplyCapture(t *testing.T) {
	body := make([]byte, 300<<10)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		name string
		max  int
		step func() int
	}{
		{"whole", len(body), func() int { return 1 + rnd.IntN(40<<10) }},
		{"small reads", 100 << 10, func() int { return 1 + rnd.IntN(3000) }},
		{"large reads", 100 << 10, func() int { return 1 + rnd.IntN(200<<10) }},
		{"cut at once", 10, func() int { return 1 + rnd.IntN(100<<10) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			cp := replyCapture{max: c.max}
			for p := body; len(p) > 0; {
				n := min(c.step(), len(p))
				cp.Write(p[:n])
				p = p[n:]
			}
			kept, cut := cp.kept()
			if cut != (len(body) > c.max) || !bytes.HasPrefix(body, kept) || len(kept) > c.max {
				t.Fatalf("kept %d bytes (a prefix: %v), cut %v", len(kept), bytes.HasPrefix(body, kept), cut)
			}
			if cut && !bytes.HasSuffix(body, cp.tail) || cut && len(cp.tail) < replyTailBytes {
				t.Fatalf("tail of %d bytes is not the body's end", len(cp.tail))
			}
		})
	}
}

// embeddingsReply is an OpenAI embeddings reply of about size bytes with
// usage at its end.
func embeddingsReply(size int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"object":"list","data":[`)
	for i := 0; b.Len() < size; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"object":"embedding","index":%d,"embedding":[`, i)
		for d := range 1024 {
			if d > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%.5f", float64((i+d)%997)/997-0.5)
		}
		b.WriteString("]}")
	}
	b.WriteString(`],"model":"emb","usage":{"prompt_tokens":4242,"total_tokens":4242}}`)
	return b.Bytes()
}

// TestLongReplyIsMetered: a non-stream reply longer than the 8 MiB kept
// whole reaches the client intact, and the usage at its end is still
// billed, plain or gzip-compressed.
func TestLongReplyIsMetered(t *testing.T) {
	reply := embeddingsReply(maxReplyCapture + 1<<20)
	zipped := gzipBytes(t, string(reply))
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := reply
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			body = zipped
		}
		// Uneven writes, so that the gateway's reads vary in size.
		for i := 0; len(body) > 0; i++ {
			n := min(len(body), 1000+(i*7919)%60000)
			_, _ = w.Write(body[:n])
			body = body[n:]
		}
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "logging: {capture_response: true}\n")
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for _, enc := range []string{"", "gzip"} {
		t.Run("encoding "+enc, func(t *testing.T) {
			req, _ := http.NewRequest("POST", gw.URL+"/v1/embeddings", strings.NewReader(`{"model":"m1","input":"hi"}`))
			req.Header.Set("Authorization", "Bearer "+testKey)
			if enc != "" {
				req.Header.Set("Accept-Encoding", enc)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var got io.Reader = resp.Body
			if enc == "gzip" {
				if got, err = gzip.NewReader(resp.Body); err != nil {
					t.Fatal(err)
				}
			}
			b, err := io.ReadAll(got)
			resp.Body.Close()
			if err != nil || !bytes.Equal(b, reply) {
				t.Fatalf("the client got %d bytes (%v), want the %d of the reply", len(b), err, len(reply))
			}
			ev := s.next(t)
			if ev.UsageSource != "backend" || ev.Usage.PromptTokens != 4242 || ev.Usage.CompletionTokens != 0 {
				t.Fatalf("usage %+v source %s, want the backend's 4242", ev.Usage, ev.UsageSource)
			}
			if ev.Response == nil || !ev.Response.Truncated || !strings.HasPrefix(ev.Response.Content, `{"object":"list"`) {
				t.Fatalf("captured response %.80v", ev.Response)
			}
		})
	}
}
