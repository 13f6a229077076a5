package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// stallingBackend answers with a chunked stream's head and first event at
// once; with X-Events: n it then sends n more events, one every X-Gap, and
// ends the stream, and without it sends nothing more and keeps the
// connection open until the test ends (an engine wedged after the head).
func stallingBackend(t *testing.T) *rawBackend {
	t.Helper()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	return newRawBackend(t, func(c net.Conn, req *http.Request) bool {
		_, _ = io.Copy(io.Discard, req.Body)
		event := "data: {}\n\n"
		if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(event), event); err != nil {
			return false
		}
		var n int
		if _, err := fmt.Sscan(req.Header.Get("X-Events"), &n); err != nil {
			<-release
			return false
		}
		gap, _ := time.ParseDuration(req.Header.Get("X-Gap"))
		for range n {
			time.Sleep(gap)
			if _, err := fmt.Fprintf(c, "%x\r\n%s\r\n", len(event), event); err != nil {
				return false
			}
		}
		_, err := io.WriteString(c, "0\r\n\r\n")
		return err == nil
	})
}

func readTimeoutTransports(t *testing.T, url string, read time.Duration) map[string]http.RoundTripper {
	t.Helper()
	d, ok := NewTransport(config.Backend{URL: url, ReadTimeout: config.Duration(read)}).(*DirectTransport)
	if !ok {
		t.Fatal("not a DirectTransport")
	}
	t.Cleanup(d.CloseIdleConnections)
	return map[string]http.RoundTripper{"direct": d, "replay": d.fallback.(*ReplayTransport)}
}

// TestTransportsReadTimeout: a backend that sends a stream's head and one
// event and then nothing, its connection left open, fails the next read of
// the body about the read timeout after it began, with an error that is a
// timeout, from either transport; the connection is not used again.
func TestTransportsReadTimeout(t *testing.T) {
	const read = 300 * time.Millisecond
	be := stallingBackend(t)
	for name, rt := range readTimeoutTransports(t, be.url, read) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := rt.RoundTrip(post(t, ctx, be.url, `{}`))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			buf := make([]byte, 1024)
			if n, err := resp.Body.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "data: {}") {
				t.Fatalf("first event: %q, %v", buf[:n], err)
			}
			start := time.Now()
			n, err := resp.Body.Read(buf)
			took := time.Since(start)
			var te interface{ Timeout() bool }
			if n != 0 || !errors.Is(err, ErrReadTimeout) || !errors.As(err, &te) || !te.Timeout() {
				t.Fatalf("read after the stall: %d bytes, %v; want the read timeout", n, err)
			}
			if took < read || took > read+2*time.Second {
				t.Fatalf("the read timeout cut the read after %v; want about %v", took, read)
			}
			if _, err := resp.Body.Read(buf); !errors.Is(err, ErrReadTimeout) {
				t.Fatalf("read after the read timeout: %v", err)
			}
		})
	}
	if n := be.conns.Load(); n != 2 {
		t.Fatalf("%d connections for two cut streams; want each on its own", n)
	}
}

// TestTransportsReadTimeoutIsPerRead: a stream whose events come more
// often than the read timeout is read whole however long it lasts, and so
// is one whose reader pauses longer than the timeout between reads: only
// the wait for the backend counts, not the relay's own pace.
func TestTransportsReadTimeoutIsPerRead(t *testing.T) {
	const read = 300 * time.Millisecond
	be := stallingBackend(t)
	for name, rt := range readTimeoutTransports(t, be.url, read) {
		t.Run(name+", steady events", func(t *testing.T) {
			req := post(t, context.Background(), be.url, `{}`)
			req.Header.Set("X-Events", "6")
			req.Header.Set("X-Gap", (read / 2).String())
			resp, err := rt.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, resp); strings.Count(got, "data: {}") != 7 {
				t.Fatalf("body %q; want 7 events", got)
			}
		})
		t.Run(name+", slow reader", func(t *testing.T) {
			req := post(t, context.Background(), be.url, `{}`)
			req.Header.Set("X-Events", "2")
			req.Header.Set("X-Gap", "0s")
			resp, err := rt.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 10)
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * read) // the reader, not the backend, is slow
			rest, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || strings.Count(string(buf)+string(rest), "data: {}") != 3 {
				t.Fatalf("body after a slow reader: %q, %v", string(buf)+string(rest), err)
			}
		})
	}
}

// TestDirectBodyReadAllocatesNothing: the read timeout's bookkeeping adds
// no allocation to a body's read.
func TestDirectBodyReadAllocatesNothing(t *testing.T) {
	b := &directBody{rc: io.NopCloser(zeroReader{}), stop: func() bool { return true }, ctx: context.Background()}
	b.watch.start(time.Hour, b)
	defer b.watch.stop()
	buf := make([]byte, 64)
	if n := testing.AllocsPerRun(1000, func() { _, _ = b.Read(buf) }); n != 0 {
		t.Fatalf("%v allocations per read", n)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { return len(p), nil }
