package balancer

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DirectTransport carries HTTP/1.1 requests to one plain-http backend on
// connections it keeps itself, doing the whole exchange on the caller's
// goroutine: it writes the request, reads the response head, and hands
// back a body that reads straight from the connection. net/http's
// Transport runs two goroutines per connection (a reader and a writer)
// and passes every request and response between them and the caller; on
// a gateway that is two goroutine hand-offs per request and two stacks,
// a set of channels and a per-request context per open stream.
//
// Semantics follow net/http's Transport as the gateway uses it: keep-alive
// connections are reused (last used first), at most maxIdle wait idle and
// none longer than idleTimeout; an idle connection is checked for the
// backend's close, or for bytes no request asked for, before it is reused
// (see peerClosed); a request that fails on a reused connection before
// any byte of a response came back, in a way that says the backend had
// closed the connection rather than taken the request (see resendable),
// is sent again on another connection when its body can be re-read (an
// engine such as llama.cpp's server may close a kept-alive connection
// without saying so), but never one the backend may have taken and worked
// on; the request's context cancels a dial, a write or a read in
// progress; the write timeout fails a request the backend takes no byte
// of for that long (its server stopped reading: a body larger than the
// socket buffers would block for ever); the head timeout (the first-byte timeout, or the response
// timeout for a request marked by WholeAnswer) runs from the request's last
// byte to the response's head; the read timeout bounds each read of the
// response's body (see readWatch). Requests for any other scheme or host go
// to fallback.
type DirectTransport struct {
	host        string // URL host the transport serves, as in req.URL.Host
	addr        string // host:port dialled
	dialer      net.Dialer
	heads       headTimeouts
	write       time.Duration // the write timeout; 0 = none
	read        time.Duration // the read timeout; 0 = none
	maxIdle     int
	idleTimeout time.Duration
	stale       time.Duration // staleWindow
	fallback    http.RoundTripper

	mu       sync.Mutex
	idle     []*directConn // oldest first
	sweeping bool
}

// directConn is one backend connection.
type directConn struct {
	t        *DirectTransport
	nc       net.Conn
	raw      syscall.RawConn // nc's, for peerClosed; nil if it has none
	br       *bufio.Reader
	bw       *bufio.Writer
	read     int64 // bytes read from nc, for telling a stale connection
	limit    int64 // bytes a read may still take (bounds a response head)
	lastUsed time.Time

	// The exchange in progress: its context's cancellation (set by the
	// context.AfterFunc that ends its I/O), the bytes written in all and
	// when the write deadline was last set, and whether the write timeout
	// failed a write (net/http's Request.Write hides the error's cause).
	canceled atomic.Bool
	wrote    int64
	mark     int64
	stalled  bool
	// sent is when the request's last byte was written (for
	// resendable).
	sent time.Time
}

func (c *directConn) Read(p []byte) (int, error) {
	if c.limit <= 0 {
		return 0, errHeadTooLarge
	}
	n, err := c.nc.Read(p)
	c.read += int64(n)
	c.limit -= int64(n)
	return n, err
}

// maxHeadBytes bounds a response's head (status line, headers and any
// interim heads before it), as net/http's MaxResponseHeaderBytes does.
const maxHeadBytes = 1 << 20

var errHeadTooLarge = errors.New("backend response head larger than 1 MiB")

// Write writes p to the backend. The write deadline bounds a stall, not
// the whole write: when it passes with bytes taken since it was set, it is
// set again and the write goes on, so only a backend that took nothing for
// the write timeout fails the request (as nginx's proxy_send_timeout).
// Setting the deadline once per request rather than before every write
// keeps a write's cost that of the socket's.
func (c *directConn) Write(p []byte) (int, error) {
	n := 0
	for {
		m, err := c.nc.Write(p[n:])
		n += m
		c.wrote += int64(m)
		if err == nil || !c.progressed(err) {
			c.stalled = err != nil && !c.canceled.Load() && errors.Is(err, os.ErrDeadlineExceeded)
			return n, err
		}
	}
}

// progressed reports whether err is the write deadline passing with bytes
// taken since it was set, and if so sets it again.
func (c *directConn) progressed(err error) bool {
	if c.wrote == c.mark || c.canceled.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	c.mark = c.wrote
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.t.write))
	if c.canceled.Load() {
		// The context ended while the deadline was being set; put its
		// deadline back.
		_ = c.nc.SetDeadline(longAgo)
		return false
	}
	return true
}

// ReadFrom copies a request body to the backend through Write (bufio's
// Writer hands a body to its writer's ReadFrom when it can), in pieces as
// large as the socket's own ReadFrom would write.
func (c *directConn) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(connWriter{c}, r, *bp)
}

// connWriter hides directConn's ReadFrom from io.CopyBuffer, which would
// call it again.
type connWriter struct{ c *directConn }

func (w connWriter) Write(p []byte) (int, error) { return w.c.Write(p) }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (c *directConn) close() { _ = c.nc.Close() }

// errHeaderTimeout is the first-byte timeout's error, a timeout like
// net/http's own.
var errHeaderTimeout = timeoutError("timeout awaiting response headers")

// errWriteTimeout is the write timeout's error: a timeout, and Unsent,
// since the backend never had the whole request and so did nothing with
// it; retrying it elsewhere costs no duplicate work, as after a failed
// connect.
var errWriteTimeout error = unsentTimeout("timeout writing the request: the backend stopped reading it")

type unsentTimeout string

func (e unsentTimeout) Error() string { return string(e) }
func (e unsentTimeout) Timeout() bool { return true }
func (e unsentTimeout) Unsent() bool  { return true }

// earlyAnswerWait is how long the head of an answer the backend sent
// before it stopped reading the request is waited for, after the write
// timeout: such an answer has long arrived when the timeout passes.
const earlyAnswerWait = 100 * time.Millisecond

type timeoutError string

func (e timeoutError) Error() string { return string(e) }
func (e timeoutError) Timeout() bool { return true }

// errBodyClosed is returned by a read after the body was closed.
var errBodyClosed = errors.New("read on closed response body")

// longAgo is a deadline in the past: setting it fails the I/O in progress.
var longAgo = time.Unix(1, 0)

// RoundTrip sends req and returns the backend's response.
func (t *DirectTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" || req.URL.Host != t.host {
		return t.fallback.RoundTrip(req)
	}
	ctx := req.Context()
	for {
		c, reused, err := t.conn(ctx)
		if err != nil {
			return nil, err
		}
		resp, retry, err := c.roundTrip(ctx, req)
		if err == nil {
			return resp, nil
		}
		if !reused || !retry {
			return nil, err
		}
		// A reused connection that failed before any response byte:
		// most likely the backend closed it while it sat idle. Send
		// again on the next connection, if the body can be read again.
		if req.Body != nil && req.Body != http.NoBody {
			if req.GetBody == nil {
				return nil, err
			}
			body, gerr := req.GetBody()
			if gerr != nil {
				return nil, err
			}
			r := *req
			r.Body = body
			req = &r
		}
	}
}

// conn returns the most recently used idle connection (reused true) or
// dials a new one.
func (t *DirectTransport) conn(ctx context.Context) (*directConn, bool, error) {
	t.mu.Lock()
	if n := len(t.idle); n > 0 {
		c := t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		if time.Since(c.lastUsed) < t.idleTimeout {
			t.mu.Unlock()
			if peerClosed(c.raw) {
				// Closed by the backend while it sat idle (nothing was
				// sent on it), or holding bytes no request asked for
				// (an engine that framed a reply wrongly, or sent a
				// second one): read as the next request's reply they
				// would answer another client. The next one may be
				// fresher.
				c.close()
				return t.conn(ctx)
			}
			return c, true, nil
		}
		// The newest is too old, so are the rest.
		stale := append(t.idle, c)
		t.idle = nil
		t.mu.Unlock()
		for _, s := range stale {
			s.close()
		}
	} else {
		t.mu.Unlock()
	}
	nc, err := t.dialer.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, false, err
	}
	c := &directConn{t: t, nc: nc}
	if sc, ok := nc.(syscall.Conn); ok {
		// Taken once: SyscallConn allocates, and peerClosed asks for
		// it at every reuse.
		c.raw, _ = sc.SyscallConn()
	}
	c.br = bufio.NewReaderSize(c, connBufferSize)
	c.bw = bufio.NewWriterSize(c, connBufferSize)
	return c, false, nil
}

// put returns c to the idle pool, or closes it when the pool is full.
func (t *DirectTransport) put(c *directConn) {
	c.lastUsed = time.Now()
	t.mu.Lock()
	if len(t.idle) >= t.maxIdle {
		t.mu.Unlock()
		c.close()
		return
	}
	t.idle = append(t.idle, c)
	sweep := !t.sweeping
	t.sweeping = true
	t.mu.Unlock()
	if sweep {
		time.AfterFunc(t.idleTimeout, t.sweep)
	}
}

// sweep closes the connections idle for idleTimeout and runs again while
// any are left, so a quiet gateway does not hold connections its backends
// have long closed.
func (t *DirectTransport) sweep() {
	now := time.Now()
	t.mu.Lock()
	n := 0
	for n < len(t.idle) && now.Sub(t.idle[n].lastUsed) >= t.idleTimeout {
		n++
	}
	stale := append([]*directConn(nil), t.idle[:n]...)
	t.idle = append(t.idle[:0], t.idle[n:]...)
	clear(t.idle[len(t.idle):cap(t.idle)])
	var next time.Duration
	if len(t.idle) > 0 {
		next = t.idleTimeout - now.Sub(t.idle[0].lastUsed)
	} else {
		t.sweeping = false
	}
	t.mu.Unlock()
	for _, c := range stale {
		c.close()
	}
	if next > 0 {
		time.AfterFunc(next, t.sweep)
	}
}

// CloseIdleConnections closes the connections waiting idle; those in use
// are closed when their requests end.
func (t *DirectTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
	if f, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		f.CloseIdleConnections()
	}
}

// staleWindow bounds how soon after a request's last byte the end of a
// reused connection must come for resendable to take it for a close that
// crossed the request on the wire. A backend that had closed the
// connection before the request reached it answers at once (the close's
// FIN, or a reset for the bytes it no longer reads); one that took the
// request and then closed it, having done the request's work or part of
// it, is not that quick. It allows for a loaded host's scheduling between
// the request's last byte and the read that sees the close (2 ms was
// passed under load: a llama.cpp-like engine closing each connection a
// millisecond after its stream had 1 in 400 requests fail with 502).
const staleWindow = 10 * time.Millisecond

// resendable reports whether err, the failure of a request on a reused
// connection before any byte of a response, says that the backend had
// closed the connection rather than taken the request: a reset or a
// broken pipe (the backend's socket was gone when the bytes arrived, or it
// closed with them unread), or its end within staleWindow of the request.
// A connection the backend closes 1.5 s after it took a POST is not one:
// sending the POST again would have the engine do its work twice.
func (c *directConn) resendable(err error) bool {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	return (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && time.Since(c.sent) < c.t.stale
}

// roundTrip does one exchange on c. On error c is closed, and retry
// reports whether the request may be sent again: no byte of a response
// came back, neither the context nor the first-byte timeout ended it, and
// the failure says the backend had closed the connection (resendable).
func (c *directConn) roundTrip(ctx context.Context, req *http.Request) (_ *http.Response, retry bool, _ error) {
	canceled := &c.canceled
	canceled.Store(false)
	c.stalled = false
	if c.t.write > 0 {
		// Set before the context can end the exchange, which sets a
		// deadline of its own.
		c.mark = c.wrote
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.t.write))
	}
	stop := context.AfterFunc(ctx, func() {
		canceled.Store(true)
		_ = c.nc.SetDeadline(longAgo)
	})
	start := c.read
	fail := func(err error) (*http.Response, bool, error) {
		stop()
		c.close()
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		return nil, c.read == start && err != errHeaderTimeout && err != errWriteTimeout && c.resendable(err), err
	}
	werr := req.Write(c.bw)
	if werr == nil {
		werr = c.bw.Flush()
	}
	c.sent = time.Now()
	if werr != nil && canceled.Load() {
		return fail(werr)
	}
	// A backend may answer before it has read the whole body (a 413, say)
	// and close: its answer is still read after a failed write. After the
	// write timeout only an answer already sent is: the backend, not
	// reading, does not have the request to answer it.
	headTimeout := c.t.heads.of(ctx)
	if werr != nil && c.stalled {
		werr, headTimeout = errWriteTimeout, earlyAnswerWait
	}
	// The deadline covers writes too: the request is written, and this
	// clears the write timeout with the read deadline below.
	if headTimeout > 0 {
		_ = c.nc.SetDeadline(time.Now().Add(headTimeout))
	} else if c.t.write > 0 {
		_ = c.nc.SetWriteDeadline(time.Time{})
	}
	if canceled.Load() {
		// The context ended while the deadline was being set.
		_ = c.nc.SetDeadline(longAgo)
	}
	var resp *http.Response
	var err error
	c.limit = maxHeadBytes
	for {
		resp, err = http.ReadResponse(c.br, req)
		if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// An interim 1xx head: the final one follows.
	}
	if err != nil {
		var ne net.Error
		if werr != nil {
			err = werr
		} else if !canceled.Load() && errors.As(err, &ne) && ne.Timeout() {
			err = errHeaderTimeout
		}
		return fail(err)
	}
	c.limit = math.MaxInt64
	if headTimeout > 0 {
		_ = c.nc.SetDeadline(time.Time{})
		if canceled.Load() {
			// The context ended while the deadline was being cleared;
			// put its deadline back.
			_ = c.nc.SetDeadline(longAgo)
		}
	}
	reuse := werr == nil && !resp.Close && !req.Close
	if resp.Body == http.NoBody {
		// Nothing follows the head: the connection is free already.
		if stop() && reuse && c.br.Buffered() == 0 {
			c.t.put(c)
		} else {
			c.close()
		}
		return resp, false, nil
	}
	body := &directBody{c: c, rc: resp.Body, stop: stop, ctx: ctx, reuse: reuse}
	if c.t.read > 0 && resp.StatusCode != http.StatusSwitchingProtocols {
		// An upgraded connection's pauses are its protocol's own.
		body.watch.start(c.t.read, body)
	}
	resp.Body = body
	return resp, false, nil
}

// directBody is a response body read straight from its connection. At its
// end the connection goes back to the pool; closed before its end, broken,
// or cut by the read timeout, the connection is closed.
type directBody struct {
	c     *directConn
	rc    io.ReadCloser
	stop  func() bool
	ctx   context.Context
	reuse bool
	eof   bool // set by Read before finish
	// state holds bodyDone once finish has run and bodyTimedOut once the
	// read timeout has cut the connection's reads: whichever comes first
	// decides whether the connection may go back to the pool.
	state atomic.Int32
	watch readWatch
}

const (
	bodyDone     = 1
	bodyTimedOut = 2
)

func (b *directBody) Read(p []byte) (int, error) {
	if st := b.state.Load(); st&bodyDone != 0 {
		switch {
		case b.eof:
			return 0, io.EOF
		case st&bodyTimedOut != 0:
			return 0, ErrReadTimeout
		}
		return 0, errBodyClosed
	}
	b.watch.begin()
	n, err := b.rc.Read(p)
	b.watch.end()
	switch {
	case err == io.EOF:
		b.eof = true
		b.finish(b.reuse && b.c.br.Buffered() == 0)
	case err != nil:
		b.finish(false)
		if b.state.Load()&bodyTimedOut != 0 {
			err = ErrReadTimeout
		} else if b.ctx.Err() != nil {
			err = b.ctx.Err()
		}
	}
	return n, err
}

// expire is the read timeout's: it fails the read in progress, unless the
// body has ended (its connection may be back in the pool by then).
func (b *directBody) expire() {
	if b.state.CompareAndSwap(0, bodyTimedOut) {
		_ = b.c.nc.SetDeadline(longAgo)
	}
}

// Close ends the body; an unread rest is not drained, its connection is
// closed instead.
func (b *directBody) Close() error {
	b.finish(false)
	return nil
}

func (b *directBody) finish(reuse bool) {
	for {
		st := b.state.Load()
		if st&bodyDone != 0 {
			return
		}
		if b.state.CompareAndSwap(st, st|bodyDone) {
			reuse = reuse && st&bodyTimedOut == 0
			break
		}
	}
	b.watch.stop()
	// stop reports false once the context's cancellation has set the
	// connection's deadline: such a connection cannot be used again.
	// Bytes already read past the reply's end belong to no request.
	if b.stop() && reuse && b.c.br.Buffered() == 0 {
		b.c.t.put(b.c)
		return
	}
	b.c.close()
}
