package gateway

import (
	"net/http"
	"strings"
)

// hopHeaders are removed in both directions (RFC 9110 §7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// copyRequestHeader copies the client's headers for the backend, without
// hop-by-hop headers and without the client's credentials: a client's API
// key is the gateway's business and never reaches a backend.
func copyRequestHeader(dst, src http.Header) {
	for k, vv := range src {
		switch k {
		case "Authorization", "X-Api-Key", "Content-Length", "Cookie", "Host":
			continue
		}
		dst[k] = vv
	}
	removeHop(dst)
}

// copyResponseHeader copies the backend's headers for the client.
func copyResponseHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = vv
	}
	removeHop(dst)
}

func removeHop(h http.Header) {
	for _, f := range h["Connection"] {
		for _, name := range strings.Split(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}
