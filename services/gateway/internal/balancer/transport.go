package balancer

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// Transport defaults applied to zero values of a backend's timeouts.
const (
	DefaultConnectTimeout   = 5 * time.Second
	DefaultWriteTimeout     = 60 * time.Second
	DefaultFirstByteTimeout = 60 * time.Second
	DefaultResponseTimeout  = 10 * time.Minute
	DefaultReadTimeout      = 5 * time.Minute
)

// wholeKey marks a request context whose answer comes whole; see
// WholeAnswer.
type wholeKey struct{}

// WholeAnswer marks ctx's request as one that does not stream: its
// backend sends the answer's head only when the whole answer is ready (a
// non-streamed completion, when generation ends), so the transport waits
// for that head up to the backend's response timeout instead of its
// first-byte timeout, which is the wait for a stream's first bytes.
func WholeAnswer(ctx context.Context) context.Context {
	return context.WithValue(ctx, wholeKey{}, true)
}

// headTimeouts are a backend's limits on the wait for an answer's head.
type headTimeouts struct {
	firstByte time.Duration // a streaming request's
	response  time.Duration // a request marked by WholeAnswer
}

// of returns the limit for the request whose context is ctx.
func (h headTimeouts) of(ctx context.Context) time.Duration {
	if ctx.Value(wholeKey{}) != nil {
		return h.response
	}
	return h.firstByte
}

// connBufferSize is the size of each backend connection's read and write
// buffers (net/http's default is 4 KiB each). They are held for as long as
// the connection lives, so on a gateway holding thousands of open streams
// they are most of what a connection costs beyond its goroutines. The
// heads an engine sends and receives are a few hundred bytes, as is one
// streamed event; a body read or written in pieces at least as large as
// the buffer goes around it, straight to the socket.
const connBufferSize = 1 << 10

// NewTransport returns the transport for one backend: the default
// transport's settings with the backend's connect timeout, write timeout,
// head timeouts (first-byte for streams, response for whole answers) and
// read timeout (a body's read waiting for the backend), and enough idle connections per host for a gateway's concurrency. Compression is left to the client so bodies pass
// through untouched and streams are not held in a decompressor. The total
// timeout (backend.timeout) is the caller's, per request.
//
// A plain-http backend reached without a proxy gets a *DirectTransport;
// any other (https, or a proxy set in the environment) net/http's own
// transport, as a *ReplayTransport. Either resends a request that fails
// on a kept-alive connection the backend had closed before any byte of a
// response came back.
func NewTransport(b config.Backend) http.RoundTripper {
	connect := b.ConnectTimeout.D()
	if connect <= 0 {
		connect = DefaultConnectTimeout
	}
	write := b.WriteTimeout.D()
	if write <= 0 {
		write = DefaultWriteTimeout
	}
	heads := headTimeouts{firstByte: b.FirstByteTimeout.D(), response: b.ResponseTimeout.D()}
	if heads.firstByte <= 0 {
		heads.firstByte = DefaultFirstByteTimeout
	}
	if heads.response <= 0 {
		heads.response = DefaultResponseTimeout
	}
	read := b.ReadTimeout.D()
	if read <= 0 {
		read = DefaultReadTimeout
	}
	dialer := net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	t := http.DefaultTransport.(*http.Transport).Clone()
	// Connections count the bytes written to them: the write timeout
	// measures a request's progress by them.
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countedConn{Conn: c}, nil
	}
	t.DisableCompression = true
	t.MaxIdleConns = 0
	t.MaxIdleConnsPerHost = maxIdlePerHost
	t.ReadBufferSize = connBufferSize
	t.WriteBufferSize = connBufferSize
	if b.TLS.IsSet() {
		// Checked when the config was loaded, and again when the
		// upstream was made (newUpstream): a file gone since fails the
		// requests, each with its error.
		c, err := b.TLS.Load()
		if err != nil {
			return failingTransport{fmt.Errorf("backend tls: %w", err)}
		}
		t.TLSClientConfig = c
	}
	replay := &ReplayTransport{Transport: t, heads: heads, write: write, read: read}
	u, err := url.Parse(b.URL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return replay
	}
	if p, err := t.Proxy(&http.Request{URL: u}); err != nil || p != nil {
		return replay
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &DirectTransport{
		host:        u.Host,
		addr:        addr,
		dialer:      dialer,
		heads:       heads,
		write:       write,
		read:        read,
		maxIdle:     maxIdlePerHost,
		idleTimeout: t.IdleConnTimeout,
		stale:       staleWindow,
		fallback:    replay,
	}
}

// maxIdlePerHost is how many idle connections a backend's transport keeps.
const maxIdlePerHost = 256

// ReplayTransport lets the embedded transport resend a request whose
// kept-alive connection turns out closed by the backend before any byte
// of a response came back. Engines such as llama.cpp's server close the
// connection a moment after a stream without saying so (no Connection:
// close), so the connection may already sit in the idle pool, or be taken
// for the next request, when the close arrives; the request then fails
// with "server closed idle connection" or an EOF. net/http resends such a
// request by itself only when it is idempotent, which a POST is not unless
// it carries an idempotency key: ReplayTransport marks every request so
// with an empty X-Idempotency-Key, which net/http does not send on the
// wire. The resend happens only on a reused connection that failed before
// the response began (never on a fresh one, never after response bytes),
// so a backend that is down still fails at once, as a connect error.
//
// Writing the request, and the wait for a response's head from the
// request's last byte, are limited as DirectTransport limits them (the
// write timeout while the body is taken, then the first-byte or the
// response timeout, by the request's context), and each read of the
// response's body by the read timeout, as DirectTransport limits them: the
// errors are the same.
type ReplayTransport struct {
	*http.Transport
	heads headTimeouts
	write time.Duration // the write timeout; 0 = none
	read  time.Duration // the read timeout; 0 = none
}

// idempotencyKey is net/http's marker; an empty value is not sent.
const idempotencyKey = "X-Idempotency-Key"

// MarkReplayable marks req, a request the caller built itself, as one
// ReplayTransport may resend when its body can be re-read, sparing
// RoundTrip a copy of its header.
func MarkReplayable(req *http.Request) {
	if needsMark(req) {
		req.Header[idempotencyKey] = nil
	}
}

// needsMark reports whether req can be resent (its body can be re-read)
// and carries neither idempotency header yet.
func needsMark(req *http.Request) bool {
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	_, marked := req.Header[idempotencyKey]
	return replayable && !marked && req.Header.Get("Idempotency-Key") == ""
}

// RoundTrip sends req, marked replayable when its body can be re-read,
// fails it when the backend takes no byte of it for the write timeout,
// waits for the response's head no longer than its head timeout, and
// for each piece of its body no longer than the read timeout.
func (t *ReplayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	d := t.heads.of(req.Context())
	if d <= 0 && t.write <= 0 && t.read <= 0 {
		return t.roundTrip(req)
	}
	// One timer, ending the request's context when it fires: from the
	// connection's arrival it is the write timeout, pushed back while
	// bytes go on being written to the connection; from the request's
	// last byte (again, if the transport resends it) the head timeout.
	ctx, cancel := context.WithCancelCause(req.Context())
	var mu sync.Mutex
	var timer *time.Timer
	var conn *countedConn // the request's connection, when it counts
	var seen int64        // its bytes written when the timer was last set
	writing, returned := false, false
	fire := func() {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case returned:
		case !writing:
			cancel(errHeaderTimeout)
		case conn != nil && conn.wrote.Load() != seen:
			seen = conn.wrote.Load()
			timer.Reset(t.write)
		default:
			cancel(errWriteTimeout)
		}
	}
	arm := func(c net.Conn, w bool, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if w {
			if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
				c = tc.NetConn() // TLS
			}
			conn, _ = c.(*countedConn)
		}
		writing = w
		if conn != nil {
			seen = conn.wrote.Load()
		}
		switch {
		case returned:
		case d <= 0:
			if timer != nil {
				timer.Stop()
			}
		case timer == nil:
			timer = time.AfterFunc(d, fire)
		default:
			timer.Reset(d)
		}
	}
	trace := &httptrace.ClientTrace{
		GotConn:      func(i httptrace.GotConnInfo) { arm(i.Conn, true, t.write) },
		WroteRequest: func(httptrace.WroteRequestInfo) { arm(nil, false, d) },
	}
	out := req.WithContext(httptrace.WithClientTrace(ctx, trace))
	resp, err := t.roundTrip(out)
	mu.Lock()
	returned = true
	if timer != nil {
		timer.Stop()
	}
	mu.Unlock()
	// fire does nothing once returned is set: the cause is final.
	if cause := context.Cause(ctx); cause == errHeaderTimeout || cause == errWriteTimeout {
		// Fired as the head came: the body's context has ended with it.
		if err == nil {
			_ = resp.Body.Close()
		}
		return nil, cause
	}
	if err != nil {
		cancel(err)
		return nil, err
	}
	// On success the context lives on with the body, and ends with the
	// caller's, or with the read timeout.
	if t.read > 0 && resp.Body != nil && resp.Body != http.NoBody && resp.StatusCode != http.StatusSwitchingProtocols {
		// (An upgraded connection's body is also its writer, and its
		// pauses are its protocol's own.)
		b := &replayBody{ReadCloser: resp.Body, cancel: cancel}
		b.watch.start(t.read, b)
		resp.Body = b
	}
	return resp, nil
}

// replayBody is a body of ReplayTransport's under the read timeout, which
// ends the request's context to fail the read in progress.
type replayBody struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
	fired  atomic.Bool
	watch  readWatch
}

func (b *replayBody) Read(p []byte) (int, error) {
	b.watch.begin()
	n, err := b.ReadCloser.Read(p)
	b.watch.end()
	if err != nil {
		b.watch.stop()
		if err != io.EOF && b.fired.Load() {
			err = ErrReadTimeout
		}
	}
	return n, err
}

func (b *replayBody) Close() error {
	b.watch.stop()
	return b.ReadCloser.Close()
}

func (b *replayBody) expire() {
	b.fired.Store(true)
	b.cancel(ErrReadTimeout)
}

// countedConn counts the bytes written to a connection.
type countedConn struct {
	net.Conn
	wrote atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.wrote.Add(int64(n))
	return n, err
}

func (t *ReplayTransport) roundTrip(req *http.Request) (*http.Response, error) {
	if !needsMark(req) {
		return t.Transport.RoundTrip(req)
	}
	r := *req // RoundTrip must not modify the caller's request
	r.Header = req.Header.Clone()
	if r.Header == nil {
		r.Header = make(http.Header)
	}
	r.Header[idempotencyKey] = nil
	return t.Transport.RoundTrip(&r)
}

// failingTransport fails every request with err.
type failingTransport struct{ err error }

func (f failingTransport) RoundTrip(*http.Request) (*http.Response, error) { return nil, f.err }
