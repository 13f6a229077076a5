package balancer

import (
	"net"
	"net/http"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// Transport defaults applied to zero values of a backend's timeouts.
const (
	DefaultConnectTimeout   = 5 * time.Second
	DefaultFirstByteTimeout = 60 * time.Second
)

// NewTransport returns the transport for one backend: the default
// transport's settings with the backend's connect timeout and first-byte
// (response header) timeout, and enough idle connections per host for a
// gateway's concurrency. Compression is left to the client so bodies pass
// through untouched and streams are not held in a decompressor. The total
// timeout (backend.timeout) is the caller's, per request.
func NewTransport(b config.Backend) http.RoundTripper {
	connect := b.ConnectTimeout.D()
	if connect <= 0 {
		connect = DefaultConnectTimeout
	}
	firstByte := b.FirstByteTimeout.D()
	if firstByte <= 0 {
		firstByte = DefaultFirstByteTimeout
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext
	t.ResponseHeaderTimeout = firstByte
	t.DisableCompression = true
	t.MaxIdleConns = 0
	t.MaxIdleConnsPerHost = 256
	return t
}
