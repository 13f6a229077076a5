// Package clientip decides a request's client address: the connection's
// peer, or the right-most untrusted X-Forwarded-For entry when the peer is a
// trusted proxy.
package clientip

import (
	"net/http"
	"net/netip"
	"strings"
)

// Resolver is immutable and safe for concurrent use.
type Resolver struct {
	trusted []netip.Prefix
}

// New returns a Resolver that believes X-Forwarded-For only from peers
// inside trusted.
func New(trusted []netip.Prefix) *Resolver { return &Resolver{trusted: trusted} }

// Resolve returns the client address of r, the connection's peer and
// whether the peer is one of the trusted proxies (whose X-Forwarded-For is
// believed), reading the peer's address once.
func (res *Resolver) Resolve(r *http.Request) (client, peer netip.Addr, trusted bool) {
	peer = peerAddr(r.RemoteAddr)
	if len(res.trusted) == 0 || !peer.IsValid() || !res.isTrusted(peer) {
		return peer, peer, false
	}
	client = peer
	xff := r.Header.Values("X-Forwarded-For")
	// Walk from the right: the nearest hop first; skip our own trusted
	// proxies, the first untrusted address is the client.
	for i := len(xff) - 1; i >= 0; i-- {
		parts := strings.Split(xff[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			hop := strings.TrimSpace(parts[j])
			if hop == "" {
				continue // "a, , b" or a trailing comma
			}
			a, ok := parseHop(hop)
			if !ok {
				// Not an address: nothing left of it can be believed.
				return client, peer, true
			}
			if !res.isTrusted(a) {
				return a, peer, true
			}
			client = a
		}
	}
	return client, peer, true
}

// isTrusted reports whether a is one of the trusted proxies. A link-local
// peer's address carries its zone (fe80::1%eth0), which no prefix can hold
// and Contains would never match: it is compared without it.
func (res *Resolver) isTrusted(a netip.Addr) bool {
	a = a.WithZone("")
	for _, p := range res.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func peerAddr(remote string) netip.Addr {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return ap.Addr().Unmap()
	}
	if a, err := netip.ParseAddr(remote); err == nil {
		return a.Unmap()
	}
	return netip.Addr{}
}

// parseHop reads an X-Forwarded-For entry: an address, or one with a port
// as some load balancers write it (203.0.113.5:8080, [2001:db8::1]:443),
// or an IPv6 address in brackets. The result is unmapped and has no zone:
// a zone names an interface of the host that wrote it, not of this one.
func parseHop(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		switch {
		case perr == nil:
			a = ap.Addr()
		case len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']':
			if a, err = netip.ParseAddr(s[1 : len(s)-1]); err != nil {
				return netip.Addr{}, false
			}
		default:
			return netip.Addr{}, false
		}
	}
	return a.Unmap().WithZone(""), true
}
