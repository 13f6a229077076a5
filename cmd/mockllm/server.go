package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// options configure a server. Knobs are the defaults every request starts
// from; Waiting and GPUCache seed the values /metrics reports.
type options struct {
	knobs
	Waiting  int
	GPUCache float64
	// Logger receives one line per cancelled or dropped stream; nil
	// discards.
	Logger *slog.Logger
	// Rand returns a number in [0,1) for error injection; nil uses
	// math/rand/v2. It must be safe for concurrent use.
	Rand func() float64
}

func (o options) validate() error {
	if err := o.knobs.validate(); err != nil {
		return err
	}
	if o.Waiting < 0 {
		return fmt.Errorf("waiting: must be >= 0, got %d", o.Waiting)
	}
	if o.GPUCache < 0 || o.GPUCache > 1 {
		return fmt.Errorf("gpu-cache: must be within 0..1, got %g", o.GPUCache)
	}
	return nil
}

// maxBody bounds request bodies; real engines reject larger ones too.
const maxBody = 32 << 20

// server is the fake engine. It is safe for concurrent use; counters are
// atomics so the hot path takes no lock.
type server struct {
	base    knobs
	log     *slog.Logger
	rand    func() float64
	mux     *http.ServeMux
	started int64 // unix seconds, reported as "created"

	ids         atomic.Uint64
	inflight    atomic.Int64
	maxInflight atomic.Int64
	total       atomic.Int64
	cancelled   atomic.Int64
	dropped     atomic.Int64
	injected    atomic.Int64
	waiting     atomic.Int64
	gpuCache    atomic.Uint64 // math.Float64bits
}

// newServer builds the handler. o must have passed validate.
func newServer(o options) *server {
	s := &server{
		base:    o.knobs,
		log:     o.Logger,
		rand:    o.Rand,
		mux:     http.NewServeMux(),
		started: time.Now().Unix(),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.rand == nil {
		s.rand = rand.Float64
	}
	s.waiting.Store(int64(o.Waiting))
	s.gpuCache.Store(math.Float64bits(o.GPUCache))

	m := s.mux
	m.HandleFunc("POST /v1/chat/completions", handle(s, famOpenAI, (*server).chatCompletions))
	m.HandleFunc("POST /v1/completions", handle(s, famOpenAI, (*server).completions))
	m.HandleFunc("POST /v1/embeddings", handle(s, famOpenAI, (*server).embeddings))
	m.HandleFunc("GET /v1/models", s.models)
	m.HandleFunc("POST /generate", handle(s, famTGI, (*server).tgiGenerate))
	m.HandleFunc("POST /generate_stream", handle(s, famTGI, (*server).tgiGenerateStream))
	m.HandleFunc("POST /api/chat", handle(s, famOllama, (*server).ollamaChat))
	m.HandleFunc("POST /api/generate", handle(s, famOllama, (*server).ollamaGenerate))
	m.HandleFunc("POST /api/embed", handle(s, famOllama, (*server).ollamaEmbed))
	m.HandleFunc("GET /api/tags", s.ollamaTags)
	m.HandleFunc("POST /v1/messages", handle(s, famAnthropic, (*server).messages))
	m.HandleFunc("GET /health", s.health)
	m.HandleFunc("GET /metrics", s.metrics)
	m.HandleFunc("POST /mock/load", s.setLoad)
	m.HandleFunc("POST /mock/reset", s.reset)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, famOpenAI, http.StatusNotFound, "no route for "+r.Method+" "+r.URL.Path)
	})
	return s
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.base.Name != "" {
		w.Header()["X-Mock-Backend"] = []string{s.base.Name}
	}
	s.mux.ServeHTTP(w, r)
}

// call is one inference request after its body was decoded.
type call struct {
	w     http.ResponseWriter
	r     *http.Request
	k     knobs
	start time.Time
}

func (c *call) ctx() context.Context { return c.r.Context() }

// model is the request's model, echoed in replies, or the default.
func (c *call) model(m string) string {
	if m == "" {
		return c.k.Model
	}
	return m
}

// capTokens returns the number of tokens to generate and whether the
// request's limit cut the reply short (finish reason "length").
func (c *call) capTokens(limit *int) (int, bool) {
	n := c.k.Tokens
	if limit != nil && *limit > 0 && *limit < n {
		return *limit, true
	}
	return n, false
}

// handle wraps an inference endpoint: it counts the request in flight,
// applies X-Mock-* overrides, decodes the JSON body into a T (400 on bad
// JSON), and injects errors at the configured rate.
func handle[T any](s *server, fam family, h func(*server, *call, *T)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.enter()
		defer s.inflight.Add(-1)

		k, err := s.base.withHeaders(r.Header)
		if k.Name != "" && k.Name != s.base.Name {
			w.Header()["X-Mock-Backend"] = []string{k.Name}
		}
		if err != nil {
			writeError(w, fam, http.StatusBadRequest, err.Error())
			return
		}
		bp := getBuf()
		defer putBuf(bp)
		body := bytes.NewBuffer(*bp)
		_, err = body.ReadFrom(http.MaxBytesReader(w, r.Body, maxBody))
		*bp = body.Bytes()
		if err != nil {
			writeError(w, fam, http.StatusBadRequest, "read body: "+err.Error())
			return
		}
		var req T
		if err := json.Unmarshal(*bp, &req); err != nil {
			writeError(w, fam, http.StatusBadRequest, "invalid JSON body: "+err.Error())
			return
		}
		if k.ErrorRate > 0 && s.rand() < k.ErrorRate {
			s.injected.Add(1)
			writeError(w, fam, k.ErrorStatus, "mockllm injected error")
			return
		}
		h(s, &call{w: w, r: r, k: k, start: time.Now()}, &req)
	}
}

func (s *server) enter() {
	n := s.inflight.Add(1)
	s.total.Add(1)
	for {
		m := s.maxInflight.Load()
		if n <= m || s.maxInflight.CompareAndSwap(m, n) {
			return
		}
	}
}

// nextID returns a per-process unique id such as "chatcmpl-mock00000001".
func (s *server) nextID(b []byte, prefix string) []byte {
	b = append(b, prefix...)
	b = append(b, "mock"...)
	id := s.ids.Add(1)
	var hex [16]byte
	for i := len(hex) - 1; i >= 0; i-- {
		hex[i] = "0123456789abcdef"[id&15]
		id >>= 4
	}
	return append(b, hex[:]...)
}

// wait sleeps d or until the client leaves; it reports whether the
// client is still there.
func (s *server) wait(c *call, d time.Duration) bool {
	ctx := c.ctx()
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// generate waits as long as an engine would take to produce n tokens
// without streaming; false means the client left and was recorded.
func (s *server) generate(c *call, n int) bool {
	d := c.k.TTFT
	if n > 1 {
		d += time.Duration(n-1) * c.k.Gap
	}
	if !s.wait(c, d) {
		s.recordCancel(c, 0)
		return false
	}
	return true
}

// recordCancel counts a request whose client went away before the reply
// was complete.
func (s *server) recordCancel(c *call, sent int) {
	s.cancelled.Add(1)
	s.log.Info("client cancelled", "path", c.r.URL.Path, "tokens_sent", sent,
		"elapsed", time.Since(c.start).Round(time.Microsecond))
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (s *server) health(w http.ResponseWriter, _ *http.Request) {
	w.Header()["Content-Type"] = []string{"text/plain; charset=utf-8"}
	_, _ = io.WriteString(w, "ok")
}
