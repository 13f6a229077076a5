package balancer

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// closingServer answers every request on a connection and then closes it
// without Connection: close, as llama.cpp's server does after a stream. It
// records whether a request carried an idempotency header on the wire.
func closingServer(t *testing.T, sawKey *atomic.Bool) string {
	t.Helper()
	return newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		if _, ok := req.Header["X-Idempotency-Key"]; ok {
			sawKey.Store(true)
		}
		okHandler(c, req)
		return false
	}).url
}

// transports returns both kinds of transport NewTransport builds for url:
// the direct one (plain http) and net/http's behind ReplayTransport (what
// https and proxied backends get).
func transports(t *testing.T, url string) map[string]http.RoundTripper {
	t.Helper()
	d := directTransport(t, url, 0)
	return map[string]http.RoundTripper{"direct": d, "replay": d.fallback.(*ReplayTransport)}
}

// TestTransportsResendOnClosedKeepAlive: POSTs are resent on a kept-alive
// connection the backend closed, whether the transport marks them (on a
// copy of their header) or the caller did with MarkReplayable.
func TestTransportsResendOnClosedKeepAlive(t *testing.T) {
	for _, marked := range []bool{false, true} {
		var sawKey atomic.Bool
		url := closingServer(t, &sawKey)
		for name, rt := range transports(t, url) {
			for i := range 50 {
				req, err := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Content-Type", "application/json")
				if marked {
					MarkReplayable(req)
				}
				resp, err := rt.RoundTrip(req)
				if err != nil {
					t.Fatalf("%s, marked %v, request %d: %v", name, marked, i, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != "ok" {
					t.Fatalf("%s, marked %v, request %d: body %q", name, marked, i, b)
				}
				if _, ok := req.Header["X-Idempotency-Key"]; ok != marked {
					t.Fatalf("%s: RoundTrip modified the caller's request", name)
				}
			}
		}
		if sawKey.Load() {
			t.Fatalf("marked %v: the empty idempotency marker went on the wire", marked)
		}
	}
}

func TestTransportsDownBackendFailsAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	for name, rt := range transports(t, url) {
		req, _ := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", strings.NewReader(`{}`))
		if _, err := rt.RoundTrip(req); err == nil {
			t.Fatalf("%s: a request to a closed port succeeded", name)
		}
	}
}

// TestTransportsHeadTimeouts: a request waits for its answer's head up to
// the first-byte timeout, or, marked WholeAnswer (it does not stream), up
// to the response timeout; a late head is the same timeout error from
// either transport, and a body that comes after the response timeout has
// passed is still read whole: the limit ends with the head.
func TestTransportsHeadTimeouts(t *testing.T) {
	const head, body = 500 * time.Millisecond, 800 * time.Millisecond
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		time.Sleep(head)
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"); err != nil {
			return false
		}
		time.Sleep(body)
		_, err := io.WriteString(c, "ok")
		return err == nil
	})
	d, ok := NewTransport(config.Backend{URL: be.url,
		FirstByteTimeout: config.Duration(100 * time.Millisecond),
		ResponseTimeout:  config.Duration(time.Second)}).(*DirectTransport)
	if !ok {
		t.Fatal("not a DirectTransport")
	}
	t.Cleanup(d.CloseIdleConnections)
	for name, rt := range map[string]http.RoundTripper{"direct": d, "replay": d.fallback.(*ReplayTransport)} {
		_, err := rt.RoundTrip(post(t, context.Background(), be.url, `{}`))
		var ne interface{ Timeout() bool }
		if !errors.Is(err, errHeaderTimeout) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("%s, stream: err = %v, want the head timeout", name, err)
		}
		resp, err := rt.RoundTrip(post(t, WholeAnswer(context.Background()), be.url, `{}`))
		if err != nil {
			t.Fatalf("%s, whole answer: %v", name, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "ok" {
			t.Fatalf("%s, whole answer: body %q, %v", name, b, err)
		}
	}
}

// TestTransportsWriteTimeout: a backend that stops reading a request whose
// body is larger than the socket buffers fails it after the write
// timeout, with an error that is a timeout and says the request was not
// sent whole (the gateway retries it as a connect failure); a backend
// taking the body slowly, every pause shorter than the timeout, is not
// cut off however long the whole write takes.
func TestTransportsWriteTimeout(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		if req.Header.Get("X-Read") == "slowly" {
			buf := make([]byte, 1<<20)
			for {
				time.Sleep(20 * time.Millisecond)
				if _, err := req.Body.Read(buf); err != nil {
					break
				}
			}
			_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return err == nil
		}
		<-release
		return false
	})
	d, ok := NewTransport(config.Backend{URL: be.url, WriteTimeout: config.Duration(300 * time.Millisecond)}).(*DirectTransport)
	if !ok {
		t.Fatal("not a DirectTransport")
	}
	t.Cleanup(d.CloseIdleConnections)
	body := strings.Repeat("x", 24<<20)
	for name, rt := range map[string]http.RoundTripper{"direct": d, "replay": d.fallback.(*ReplayTransport)} {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := rt.RoundTrip(post(t, ctx, be.url, body))
		cancel()
		var ne interface{ Timeout() bool }
		var us interface{ Unsent() bool }
		if !errors.Is(err, errWriteTimeout) || !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &us) || !us.Unsent() {
			t.Fatalf("%s: after %v: err = %v, want the write timeout", name, time.Since(start), err)
		}
		req := post(t, context.Background(), be.url, body)
		req.Header.Set("X-Read", "slowly")
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s, a body read slowly: %v", name, err)
		}
		if got := readAll(t, resp); got != "ok" {
			t.Fatalf("%s, a body read slowly: %q", name, got)
		}
	}
}

// TestTransportsEarlyAnswerThenStall: a backend that answers before it has
// read the request's body, and then neither reads nor closes, has its
// answer relayed once the write timeout ends the write (net/http's
// transport reads it at once).
func TestTransportsEarlyAnswerThenStall(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
		<-release
		return false
	})
	d, ok := NewTransport(config.Backend{URL: be.url, WriteTimeout: config.Duration(300 * time.Millisecond)}).(*DirectTransport)
	if !ok {
		t.Fatal("not a DirectTransport")
	}
	t.Cleanup(d.CloseIdleConnections)
	for name, rt := range map[string]http.RoundTripper{"direct": d, "replay": d.fallback.(*ReplayTransport)} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := rt.RoundTrip(post(t, ctx, be.url, strings.Repeat("x", 24<<20)))
		if err != nil {
			cancel()
			t.Fatalf("%s: %v", name, err)
		}
		got := readAll(t, resp)
		cancel()
		if resp.StatusCode != 413 || got != "too large" {
			t.Fatalf("%s: %d %q", name, resp.StatusCode, got)
		}
	}
}
