package balancer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// rawBackend serves each connection with handle, reading requests one after
// another until handle returns false, and counts the connections accepted.
type rawBackend struct {
	url   string
	conns atomic.Int64
}

func newRawBackend(t *testing.T, handle func(c net.Conn, req *http.Request) bool) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	b := &rawBackend{url: "http://" + ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if !handle(c, req) {
						return
					}
				}
			}()
		}
	}()
	return b
}

// okHandler reads the body and answers 200 "ok" with a Content-Length.
func okHandler(c net.Conn, req *http.Request) bool {
	_, _ = io.Copy(io.Discard, req.Body)
	_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	return err == nil
}

func directTransport(t *testing.T, url string, firstByte time.Duration) *DirectTransport {
	t.Helper()
	d, ok := NewTransport(config.Backend{URL: url, FirstByteTimeout: config.Duration(firstByte)}).(*DirectTransport)
	if !ok {
		t.Fatalf("%s: not a DirectTransport", url)
	}
	t.Cleanup(d.CloseIdleConnections)
	return d
}

func post(t *testing.T, ctx context.Context, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return string(b)
}

func TestDirectTransportReusesConnection(t *testing.T) {
	be := newRawBackend(t, okHandler)
	d := directTransport(t, be.url, 0)
	for i := range 20 {
		resp, err := d.RoundTrip(post(t, context.Background(), be.url, `{"i":1}`))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if got := readAll(t, resp); got != "ok" || resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, got)
		}
	}
	if n := be.conns.Load(); n != 1 {
		t.Fatalf("20 requests in turn used %d connections, want 1", n)
	}
}

func TestDirectTransportChunkedAndInterimHeads(t *testing.T) {
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		_, err := io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"+
			"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+
			"6\r\ndata: \r\n3\r\nab\n\r\n0\r\nX-Trailer: t\r\n\r\n")
		return err == nil
	})
	d := directTransport(t, be.url, 0)
	for i := range 3 {
		resp, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("request %d: %d %v", i, resp.StatusCode, resp.Header)
		}
		if got := readAll(t, resp); got != "data: ab\n" {
			t.Fatalf("request %d: body %q", i, got)
		}
	}
	if n := be.conns.Load(); n != 1 {
		t.Fatalf("chunked replies: %d connections, want 1", n)
	}
}

func TestDirectTransportEarlyCloseDropsConnection(t *testing.T) {
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
		return err == nil
	})
	d := directTransport(t, be.url, 0)
	for range 3 {
		resp, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if _, err := resp.Body.Read(buf); err == nil {
			t.Fatal("a read after Close succeeded")
		}
	}
	// The unread rest would corrupt the next reply on the same
	// connection: each request needs its own.
	if n := be.conns.Load(); n != 3 {
		t.Fatalf("3 bodies closed early: %d connections, want 3", n)
	}
}

func TestDirectTransportCloseDelimitedBody(t *testing.T) {
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
		return false
	})
	d := directTransport(t, be.url, 0)
	for range 2 {
		resp, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`))
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, resp); got != "until the end" {
			t.Fatalf("body %q", got)
		}
	}
	if n := be.conns.Load(); n != 2 {
		t.Fatalf("close-delimited replies: %d connections, want 2", n)
	}
}

func TestDirectTransportFirstByteTimeout(t *testing.T) {
	stalled := make(chan struct{})
	t.Cleanup(func() { close(stalled) })
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		<-stalled
		return false
	})
	d := directTransport(t, be.url, 50*time.Millisecond)
	_, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`))
	var ne interface{ Timeout() bool } // what the gateway's classify looks for
	if !errors.Is(err, errHeaderTimeout) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("err = %v, want the first-byte timeout", err)
	}
	if n := be.conns.Load(); n != 1 {
		t.Fatalf("a timed-out request was sent again: %d connections", n)
	}
}

func TestDirectTransportContextCancels(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	got := make(chan struct{}, 1)
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		if req.Header.Get("X-Stall") == "body" {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
		}
		got <- struct{}{}
		<-release
		return false
	})
	d := directTransport(t, be.url, time.Minute)
	for _, stall := range []string{"head", "body"} {
		ctx, cancel := context.WithCancel(context.Background())
		req := post(t, ctx, be.url, `{}`)
		req.Header.Set("X-Stall", stall)
		var resp *http.Response
		var err error
		if stall == "head" {
			// Cancelled while RoundTrip waits for a head that never comes.
			go func() {
				<-got
				cancel()
			}()
			_, err = d.RoundTrip(req)
		} else {
			// Cancelled with half the body read and the rest held back.
			if resp, err = d.RoundTrip(req); err != nil {
				t.Fatal(err)
			}
			<-got
			if _, err := io.ReadFull(resp.Body, make([]byte, 5)); err != nil {
				t.Fatal(err)
			}
			cancel()
			_, err = io.ReadAll(resp.Body)
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("stalled %s: err = %v, want context.Canceled", stall, err)
		}
	}
	if len(d.idle) != 0 {
		t.Fatal("a cancelled exchange's connection went back to the pool")
	}
}

func TestDirectTransportEarlyAnswerToUnreadBody(t *testing.T) {
	// The backend refuses a huge body from its head alone and closes,
	// as a server enforcing a size limit does: the client gets the 413,
	// not a write error.
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
		return false
	})
	d := directTransport(t, be.url, 0)
	resp, err := d.RoundTrip(post(t, context.Background(), be.url, strings.Repeat("x", 64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); resp.StatusCode != 413 || got != "too large" {
		t.Fatalf("%d %q", resp.StatusCode, got)
	}
}

func TestDirectTransportStaleConnection(t *testing.T) {
	// Each connection serves one request and closes without saying so.
	closed := make(chan struct{}, 1)
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		okHandler(c, req)
		c.Close()
		closed <- struct{}{}
		return false
	})
	d := directTransport(t, be.url, 0)
	for i := range 5 {
		resp, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		readAll(t, resp)
		<-closed // the pooled connection is now closed at the far end
	}
	// Each closed connection was seen before a request was sent on it.
	if n := be.conns.Load(); n != 5 {
		t.Fatalf("%d connections for 5 requests", n)
	}
}

// TestDirectTransportResendsOnlyWhatTheBackendRefused: a request that
// fails on a reused connection is sent again only when the backend closed
// it at once (the close crossed the request on the wire), never when the
// backend took the request and closed the connection later: an engine
// that may have done the work is not asked to do it twice.
func TestDirectTransportResendsOnlyWhatTheBackendRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hold    time.Duration
		reset   bool // close with a reset, not a FIN
		stale   time.Duration
		oneShot bool // a body that cannot be read again
		resend  bool
	}{
		// The window is wide here so that a loaded machine's
		// scheduling does not decide the test.
		{"closed at once", 0, false, time.Minute, false, true},
		{"reset, even late", 100 * time.Millisecond, true, time.Millisecond, false, true},
		{"closed after taking it", 100 * time.Millisecond, false, 50 * time.Millisecond, false, false},
		{"closed at once, one-shot body", 0, false, time.Minute, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int64
			be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
				n := requests.Add(1)
				_, _ = io.Copy(io.Discard, req.Body)
				if req.Header.Get("X-Drop") != "" && n == 2 {
					time.Sleep(tc.hold)
					if tc.reset {
						_ = c.(*net.TCPConn).SetLinger(0)
					}
					return false // closes without an answer
				}
				_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				return err == nil
			})
			d := directTransport(t, be.url, 0)
			d.stale = tc.stale
			resp, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`))
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			req := post(t, context.Background(), be.url, `{}`)
			req.Header.Set("X-Drop", "1")
			if tc.oneShot {
				req.Body = io.NopCloser(strings.NewReader(`{}`))
				req.GetBody = nil
			}
			resp, err = d.RoundTrip(req)
			if tc.resend {
				if err != nil {
					t.Fatalf("not resent: %v", err)
				}
				readAll(t, resp)
				if n := requests.Load(); n != 3 {
					t.Fatalf("backend saw %d requests, want 3", n)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %d: the request was sent again", resp.StatusCode)
			}
			if n := requests.Load(); n != 2 {
				t.Fatalf("backend saw %d requests, want 2 (sent once)", n)
			}
		})
	}
}

// TestDirectTransportDropsUnsolicitedBytes: bytes a backend sends past a
// reply (a second reply nobody asked for) are never read as the next
// request's reply: that would hand one client's answer to another.
func TestDirectTransportDropsUnsolicitedBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		gap  time.Duration // between the reply and the extra bytes
	}{{"with the reply", 0}, {"after the reply", 20 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int64
			be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
				n := requests.Add(1)
				_, _ = io.Copy(io.Discard, req.Body)
				reply := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok%d", n)
				if n == 1 {
					extra := "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
					if tc.gap == 0 {
						reply += extra
					} else {
						_, _ = io.WriteString(c, reply)
						time.Sleep(tc.gap)
						reply = extra
					}
				}
				_, err := io.WriteString(c, reply)
				return err == nil
			})
			d := directTransport(t, be.url, 0)
			resp, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`))
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, resp); got != "ok1" {
				t.Fatalf("first reply %q", got)
			}
			time.Sleep(2 * tc.gap)
			resp, err = d.RoundTrip(post(t, context.Background(), be.url, `{}`))
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, resp); got != "ok2" {
				t.Fatalf("second request's reply %q, want the backend's answer to it", got)
			}
		})
	}
}

func TestDirectTransportIdleLimits(t *testing.T) {
	be := newRawBackend(t, okHandler)
	d := directTransport(t, be.url, 0)
	d.maxIdle = 2
	// Four at once: four connections, of which two stay idle.
	resps := make([]*http.Response, 4)
	for i := range resps {
		var err error
		if resps[i], err = d.RoundTrip(post(t, context.Background(), be.url, `{}`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range resps {
		readAll(t, r)
	}
	d.mu.Lock()
	idle := len(d.idle)
	d.mu.Unlock()
	if idle != 2 || be.conns.Load() != 4 {
		t.Fatalf("idle %d of %d connections, want 2 of 4", idle, be.conns.Load())
	}
	d.mu.Lock()
	scheduled := d.sweeping
	for _, c := range d.idle {
		c.lastUsed = time.Now().Add(-d.idleTimeout - time.Second)
	}
	d.mu.Unlock()
	if !scheduled {
		t.Fatal("no sweep was scheduled for the idle connections")
	}
	d.sweep()
	d.mu.Lock()
	idle = len(d.idle)
	d.mu.Unlock()
	if idle != 0 {
		t.Fatalf("%d connections still idle after the sweep", idle)
	}
	resp, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if n := be.conns.Load(); n != 5 {
		t.Fatalf("after the sweep: %d connections, want a fifth", n)
	}
}

func TestDirectTransportOtherHostsGoToFallback(t *testing.T) {
	be := newRawBackend(t, okHandler)
	other := newRawBackend(t, okHandler)
	d := directTransport(t, be.url, 0)
	resp, err := d.RoundTrip(post(t, context.Background(), other.url, `{}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != "ok" || other.conns.Load() != 1 || len(d.idle) != 0 {
		t.Fatalf("%q; other host's connections %d, direct pool %d", got, other.conns.Load(), len(d.idle))
	}
}

func TestDirectTransportBoundsTheHead(t *testing.T) {
	be := newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Filler: " + strings.Repeat("x", 1000) + "\r\n"
		for range 2000 {
			if _, err := io.WriteString(c, line); err != nil {
				return false
			}
		}
		return false
	})
	d := directTransport(t, be.url, 0)
	if _, err := d.RoundTrip(post(t, context.Background(), be.url, `{}`)); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("a 2 MB head: err = %v", err)
	}
}
