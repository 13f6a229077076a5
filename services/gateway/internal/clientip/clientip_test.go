package clientip

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestResolve(t *testing.T) {
	res := New([]netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("fe80::/10"),
		netip.MustParsePrefix("2001:db8::1/128"),
	})
	cases := []struct {
		name        string
		remote      string
		xff         []string
		client      string
		peer        string
		peerTrusted bool
	}{
		{"direct client", "203.0.113.9:4000", []string{"198.51.100.1"}, "203.0.113.9", "203.0.113.9", false},
		{"trusted proxy", "10.1.2.3:4000", []string{"198.51.100.1"}, "198.51.100.1", "10.1.2.3", true},
		{"trusted proxy, no header", "10.1.2.3:4000", nil, "10.1.2.3", "10.1.2.3", true},
		{"chain of trusted proxies", "10.1.2.3:4000", []string{"198.51.100.1, 10.9.9.9", "10.8.8.8"}, "198.51.100.1", "10.1.2.3", true},
		{"mapped peer", "[::ffff:10.1.2.3]:4000", []string{"198.51.100.1"}, "198.51.100.1", "10.1.2.3", true},
		{"bad entry stops the walk", "10.1.2.3:4000", []string{"198.51.100.1, junk, 10.9.9.9"}, "10.9.9.9", "10.1.2.3", true},
		{"link-local proxy with its zone", "[fe80::1%eth0]:4000", []string{"198.51.100.1"}, "198.51.100.1", "fe80::1%eth0", true},
		{"link-local proxy with its zone, no port", "fe80::1%eth0", []string{"198.51.100.1"}, "198.51.100.1", "fe80::1%eth0", true},
		{"link-local proxy in the chain with its zone", "10.1.2.3:4000", []string{"198.51.100.1, fe80::2%eth0"}, "198.51.100.1", "10.1.2.3", true},
		{"single trusted address with a zone", "[2001:db8::1%eth0]:4000", []string{"198.51.100.1"}, "198.51.100.1", "2001:db8::1%eth0", true},
		{"zoned address outside", "[fd00::1%eth0]:4000", []string{"198.51.100.1"}, "fd00::1%eth0", "fd00::1%eth0", false},
		// Entries with a port, as some load balancers write them.
		{"entry with a port", "10.1.2.3:4000", []string{"203.0.113.5:8080"}, "203.0.113.5", "10.1.2.3", true},
		{"IPv6 entry with a port", "10.1.2.3:4000", []string{"[2001:db8::5]:443"}, "2001:db8::5", "10.1.2.3", true},
		{"IPv6 entry in brackets", "10.1.2.3:4000", []string{"[2001:db8::5]"}, "2001:db8::5", "10.1.2.3", true},
		{"trusted hop with a port", "10.1.2.3:4000", []string{"203.0.113.5, 10.9.9.9:81"}, "203.0.113.5", "10.1.2.3", true},
		{"empty entries", "10.1.2.3:4000", []string{"203.0.113.5, ,", ""}, "203.0.113.5", "10.1.2.3", true},
		// A client's zone names an interface of another host.
		{"zoned client entry", "10.1.2.3:4000", []string{"2001:db8::7%eth0"}, "2001:db8::7", "10.1.2.3", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: c.remote, Header: http.Header{}}
			for _, v := range c.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			client, peer, trusted := res.Resolve(r)
			if client != netip.MustParseAddr(c.client) || peer != netip.MustParseAddr(c.peer) || trusted != c.peerTrusted {
				t.Fatalf("Resolve = %v, %v, %v; want %s, %s, %v", client, peer, trusted, c.client, c.peer, c.peerTrusted)
			}
		})
	}
}

// TestResolveZonedPeerAllocs: comparing a zoned peer without its zone
// costs nothing more than comparing any other peer.
func TestResolveZonedPeerAllocs(t *testing.T) {
	res := New([]netip.Prefix{netip.MustParsePrefix("fe80::/10")})
	plain := &http.Request{RemoteAddr: "[fe80::1]:4000", Header: http.Header{}}
	zoned := &http.Request{RemoteAddr: "[fe80::1%eth0]:4000", Header: http.Header{}}
	want := testing.AllocsPerRun(100, func() { res.Resolve(plain) })
	if got := testing.AllocsPerRun(100, func() { res.Resolve(zoned) }); got > want {
		t.Fatalf("Resolve of a zoned peer allocates %v times, a plain one %v", got, want)
	}
}
