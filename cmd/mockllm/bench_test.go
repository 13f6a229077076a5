package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// discardWriter is a flushable ResponseWriter that keeps nothing, so the
// benchmarks measure the handler alone.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Flush()                      {}

func benchHandler(b *testing.B, path, body string) {
	s := newServer(options{knobs: defaultKnobs()})
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		s.ServeHTTP(&discardWriter{h: http.Header{}}, req)
	}
}

func BenchmarkChatStream16(b *testing.B) {
	benchHandler(b, "/v1/chat/completions",
		`{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello there"}]}`)
}

func BenchmarkChatNonStream16(b *testing.B) {
	benchHandler(b, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hello there"}]}`)
}
