package balancer

import (
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// Transport defaults applied to zero values of a backend's timeouts.
const (
	DefaultConnectTimeout   = 5 * time.Second
	DefaultFirstByteTimeout = 60 * time.Second
)

// connBufferSize is the size of each backend connection's read and write
// buffers (net/http's default is 4 KiB each). They are held for as long as
// the connection lives, so on a gateway holding thousands of open streams
// they are most of what a connection costs beyond its goroutines. The
// heads an engine sends and receives are a few hundred bytes, as is one
// streamed event; a body read or written in pieces at least as large as
// the buffer goes around it, straight to the socket.
const connBufferSize = 1 << 10

// NewTransport returns the transport for one backend: the default
// transport's settings with the backend's connect timeout and first-byte
// (response header) timeout, and enough idle connections per host for a
// gateway's concurrency. Compression is left to the client so bodies pass
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
	firstByte := b.FirstByteTimeout.D()
	if firstByte <= 0 {
		firstByte = DefaultFirstByteTimeout
	}
	dialer := net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = dialer.DialContext
	t.ResponseHeaderTimeout = firstByte
	t.DisableCompression = true
	t.MaxIdleConns = 0
	t.MaxIdleConnsPerHost = maxIdlePerHost
	t.ReadBufferSize = connBufferSize
	t.WriteBufferSize = connBufferSize
	replay := &ReplayTransport{Transport: t}
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
		firstByte:   firstByte,
		maxIdle:     maxIdlePerHost,
		idleTimeout: t.IdleConnTimeout,
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
type ReplayTransport struct {
	*http.Transport
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

// RoundTrip sends req, marked replayable when its body can be re-read.
func (t *ReplayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
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
