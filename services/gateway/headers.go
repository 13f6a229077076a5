package gateway

import (
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"github.com/llmproxy/llmproxy/services/gateway/internal/redact"
)

// hopHeaders are removed in both directions (RFC 9110 §7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// copyRequestHeader copies the client's headers for the backend, without
// hop-by-hop headers and without the client's credentials: a client's API
// key is the gateway's business and never reaches a backend. Api-Key is
// where Azure OpenAI clients send theirs; the gateway does not take a key
// from it, but a client pointed at the gateway sends it all the same.
// Expect is the gateway's to answer: it has the whole body before it sends
// the request on. The key the request authenticated with (secret) is
// replaced wherever else a client put it (a Referer with ?api_key=, a
// header an SDK of another provider sends), as in the body.
func copyRequestHeader(dst, src http.Header, secret string) {
	for k, vv := range src {
		switch k {
		case "Authorization", "X-Api-Key", "Api-Key", "Content-Length", "Cookie", "Host", "Expect",
			"X-Llmproxy-Request-Id": // the gateway's name: a client's would pose as its id
			continue
		}
		dst[k] = vv
		for i, v := range vv {
			w := withoutKey(v, secret)
			if w == v && strings.ContainsAny(v, "%+") {
				// A URL (a Referer) with the key percent-encoded.
				w, _ = spelledWithoutKey(v, secret)
			}
			if w != v {
				if &dst[k][0] == &vv[0] {
					dst[k] = slices.Clone(vv) // the client's own stay as sent
				}
				dst[k][i] = w
			}
		}
	}
	removeHop(dst)
	if _, ok := src["User-Agent"]; !ok {
		// A client that sent none: the backend sees none either, not
		// the gateway's HTTP library's (as httputil.ReverseProxy does).
		dst["User-Agent"] = []string{""}
	}
}

// untrustedForwarding reports whether k (canonical) is a header a proxy,
// a CDN or a platform's edge sets about a client's connection (its
// address, scheme, host, certificate, the URL it asked for), dropped when
// the peer is not a trusted proxy: from any other peer it is the client's
// own claim, which a backend set to believe it would take as fact.
func untrustedForwarding(k string) bool {
	if strings.IndexByte(k, '_') >= 0 {
		// X_Forwarded_For: CGI-style servers (WSGI, PHP) read '_' and
		// '-' alike.
		k = http.CanonicalHeaderKey(strings.ReplaceAll(k, "_", "-"))
	}
	switch k {
	case "X-Forwarded-For", "X-Real-Ip", "Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port",
		"X-Forwarded-Server", "X-Forwarded", "Forwarded-For", "X-Client-Ip", "True-Client-Ip", "Client-Ip",
		"X-Originating-Ip", "X-Remote-Ip", "X-Remote-Addr", "X-Proxyuser-Ip", "X-Cluster-Client-Ip",
		"X-Original-Forwarded-For", "X-Original-Host", "X-Original-Url", "X-Rewrite-Url",
		"Cf-Connecting-Ip", "Cf-Connecting-Ipv6", "Fastly-Client-Ip", "Fly-Client-Ip", "X-Azure-Clientip",
		"X-Azure-Socketip", "X-Appengine-User-Ip", "Cloudfront-Viewer-Address", "X-Vercel-Forwarded-For",
		"X-Nf-Client-Connection-Ip", "X-Envoy-External-Address", "X-Envoy-Internal", "X-Forwarded-Client-Cert",
		"X-Forwarded-Prefix", "X-Forwarded-Uri", "X-Forwarded-Path", "X-Original-Uri", "X-Host", "X-Forwarded-Ssl",
		"X-Forwarded-Scheme", "X-Url-Scheme", "Front-End-Https", "X-Scheme", "X-Client-Cert", "Ssl-Client-Cert",
		"X-Forwarded-Protocol", "X-Forwarded-Proto-Version", "X-Original-Proto", "X-Https", "X-Arr-Ssl", "Cf-Visitor",
		"Ssl-Offloaded", "X-Envoy-Original-Path", "X-Envoy-Original-Host", "X-Original-Path", "X-Proxy-Url",
		"Remote-Addr", "X-Original-Remote-Addr", "Akamai-Origin-Hop", "X-Arr-Clientcert":
		return true
	}
	return false
}

// setForwardedFor gives the backend the request's chain of addresses in
// X-Forwarded-For, as reverse proxies do: behind a trusted proxy the chain
// it sent is kept and the peer (that proxy) is appended; from any other
// peer the client's own X-Forwarded-For, X-Real-Ip and Forwarded are not
// believed (a client could write anything there) and the backend sees the
// peer alone.
func setForwardedFor(dst http.Header, peer netip.Addr, trusted bool) {
	if !trusted {
		// Every header a proxy would set about the client's connection:
		// from any other peer they are the client's own claims.
		for k := range dst {
			if untrustedForwarding(k) {
				delete(dst, k)
			}
		}
		if peer.IsValid() {
			dst["X-Forwarded-For"] = []string{peer.String()}
		}
		return
	}
	if prior := dst.Values("X-Forwarded-For"); len(prior) > 0 {
		dst["X-Forwarded-For"] = []string{strings.Join(prior, ", ") + ", " + peer.String()}
		return
	}
	dst["X-Forwarded-For"] = []string{peer.String()}
}

// setJSONContentType makes h, the headers of a request whose body the
// gateway has read as a JSON object, say so: a client's missing or other
// Content-Type (curl -d sends application/x-www-form-urlencoded) is
// replaced with application/json, which vLLM and TGI require (415
// otherwise). A client's application/json is kept with its parameters.
func setJSONContentType(h http.Header) {
	ct := h.Get("Content-Type")
	if ct == "application/json" {
		return // the usual case, without ParseMediaType's allocations
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == "application/json" {
		return
	}
	h.Set("Content-Type", "application/json")
}

// backendQuery returns the client's query string q for the backend, without
// the parameters clients put an API key in (key, api_key, api-key, apikey,
// access_token, in any case), as copyRequestHeader leaves out the headers:
// the gateway takes no key from them, and a backend's credentials are its
// own headers. A ';' counts as a separator as well as '&', since some
// servers still split on it (Go's did before 1.17): "x=1;key=..." must not
// take its key through. Other parameters are kept as written, in order,
// each joined to the next kept one by the separator that followed it.
func backendQuery(q string) string {
	if q == "" || !hasKeyParam(q) {
		return q
	}
	var b strings.Builder
	var sep byte // what followed the last parameter kept; 0 before the first
	for {
		p, rest, next := cutParam(q)
		if !isKeyParam(p) {
			if sep != 0 {
				b.WriteByte(sep)
			}
			b.WriteString(p)
			sep = next
		}
		if next == 0 {
			return b.String()
		}
		q = rest
	}
}

// queryWithoutKey returns the query q with the key the request
// authenticated with (secret), written as is or percent-encoded, replaced
// by redact.Placeholder in whatever parameter holds it, as the headers and
// the body have it replaced. A parameter that holds it is written again
// with its name and value escaped; the others are kept as written.
func queryWithoutKey(q, secret string) string {
	if len(secret) < minScrubbedSecret || (!strings.Contains(q, secret) && !strings.ContainsAny(q, "%+")) {
		return q
	}
	var b strings.Builder
	for {
		p, rest, next := cutParam(q)
		b.WriteString(paramWithoutKey(p, secret))
		if next == 0 {
			return b.String()
		}
		b.WriteByte(next)
		q = rest
	}
}

// paramWithoutKey returns the query parameter p ("name=value") with secret
// replaced in its name and its value (see spelledWithoutKey); p itself when
// neither holds it.
func paramWithoutKey(p, secret string) string {
	name, value, hasValue := strings.Cut(p, "=")
	clean := func(s string) (string, bool) {
		u, ok := spelledWithoutKey(s, secret)
		if !ok {
			return s, false
		}
		return url.QueryEscape(u), true
	}
	n, nc := clean(name)
	v, vc := clean(value)
	if !nc && !vc {
		return p
	}
	if !hasValue {
		return n
	}
	return n + "=" + v
}

// spelledWithoutKey returns s, a part of a URL, with secret replaced by
// redact.Placeholder, read as servers read it: as written, unescaped as a
// query ('+' a space) and unescaped as a path ('+' itself). The result is
// unescaped; ok is false, and s returned, when no reading holds the key.
func spelledWithoutKey(s, secret string) (string, bool) {
	if len(secret) < minScrubbedSecret {
		return s, false
	}
	forms := [3]string{s}
	if u, err := url.QueryUnescape(s); err == nil {
		forms[1] = u
	}
	if u, err := url.PathUnescape(s); err == nil {
		forms[2] = u
	}
	for _, f := range forms {
		if holdsKey(f, secret) {
			return strings.ReplaceAll(f, secret, redact.Placeholder), true
		}
	}
	return s, false
}

func hasKeyParam(q string) bool {
	for {
		p, rest, next := cutParam(q)
		if isKeyParam(p) {
			return true
		}
		if next == 0 {
			return false
		}
		q = rest
	}
}

// cutParam returns the first parameter of the query q, the rest after it,
// and the separator between them ('&' or ';'; 0 when p is the last).
func cutParam(q string) (p, rest string, sep byte) {
	i := strings.IndexAny(q, "&;")
	if i < 0 {
		return q, "", 0
	}
	return q[:i], q[i+1:], q[i]
}

// isKeyParam reports whether the query parameter p ("name=value") names a
// key parameter; the name may be percent-encoded.
func isKeyParam(p string) bool {
	name, _, _ := strings.Cut(p, "=")
	if strings.ContainsAny(name, "%+") {
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
	}
	for _, k := range keyParams {
		if strings.EqualFold(name, k) {
			return true
		}
	}
	return false
}

// keyParams are the query parameters clients put an API key in (Google's
// key, api_key, Azure's api-key, apikey, OAuth's access_token).
var keyParams = [...]string{"key", "api_key", "api-key", "apikey", "access_token"}

// copyResponseHeader copies the backend's headers for the client, except
// a backend's own request ids: the client gets the ones the gateway set
// (begin), which name the request in its logs and events.
func copyResponseHeader(dst, src http.Header) {
	for k, vv := range src {
		if isRequestIDHeader(k) {
			continue
		}
		dst[k] = vv
	}
	removeHop(dst)
	if len(src.Values("Content-Type")) == 0 {
		// A reply the backend sent without a content type goes without
		// one: net/http would otherwise name one it sniffed.
		dst["Content-Type"] = nil
	}
}

// isRequestIDHeader reports whether k names one of the request id headers
// the gateway answers with, in any case.
func isRequestIDHeader(k string) bool {
	switch len(k) {
	case len("X-Request-Id"):
		return strings.EqualFold(k, "X-Request-Id")
	case len("X-Llmproxy-Request-Id"):
		return strings.EqualFold(k, "X-Llmproxy-Request-Id")
	}
	return false
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

// The Accept-Encoding values the gateway sends a backend. They are shared
// and never modified.
var (
	acceptIdentity    = []string{"identity"}
	acceptGzipDeflate = []string{"gzip, deflate"}
	acceptGzip        = []string{"gzip"}
	acceptDeflate     = []string{"deflate"}
)

// setBackendAcceptEncoding limits the Accept-Encoding that h, a request for
// a backend, carries to what the gateway can read. With identity (a stream,
// or a reply an on_response script will read) the reply is asked for
// uncompressed: a stream's events are read, filtered (the usage chunk the
// client did not ask for) and ended with an error event one by one. Any
// other reply may come in gzip or deflate, which the gateway decompresses
// on the side to read usage while the client gets the compressed bytes;
// codings it cannot read (br, zstd, ...) are dropped, and a request without
// Accept-Encoding is left without. It does not allocate.
func setBackendAcceptEncoding(h http.Header, identity bool) {
	if identity {
		h["Accept-Encoding"] = acceptIdentity
		return
	}
	vv, ok := h["Accept-Encoding"]
	if !ok {
		return
	}
	gzip, deflate := readableCodings(vv)
	switch {
	case gzip && deflate:
		h["Accept-Encoding"] = acceptGzipDeflate
	case gzip:
		h["Accept-Encoding"] = acceptGzip
	case deflate:
		h["Accept-Encoding"] = acceptDeflate
	default:
		h["Accept-Encoding"] = acceptIdentity
	}
}

// readableCodings reports whether the Accept-Encoding values vv accept
// gzip (or x-gzip) and deflate: named with a q above 0, or matched by "*"
// when not named.
func readableCodings(vv []string) (gzip, deflate bool) {
	var gzipNamed, deflateNamed, wildcard bool
	for _, v := range vv {
		for v != "" {
			var item string
			item, v, _ = strings.Cut(v, ",")
			name, params, _ := strings.Cut(item, ";")
			name = strings.TrimSpace(name)
			ok := qAccepts(params)
			switch {
			case strings.EqualFold(name, "gzip"), strings.EqualFold(name, "x-gzip"):
				gzipNamed, gzip = true, gzip || ok
			case strings.EqualFold(name, "deflate"):
				deflateNamed, deflate = true, deflate || ok
			case name == "*":
				wildcard = ok
			}
		}
	}
	return gzip || !gzipNamed && wildcard, deflate || !deflateNamed && wildcard
}

// qAccepts reports whether the parameters of an Accept-Encoding item leave
// it accepted: no q, or a q other than 0.
func qAccepts(params string) bool {
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		k, val, _ := strings.Cut(p, "=")
		if !strings.EqualFold(strings.TrimSpace(k), "q") {
			continue
		}
		val = strings.TrimSpace(val)
		if val == "" || val[0] != '0' {
			return true
		}
		for _, c := range val[1:] {
			if c != '.' && c != '0' {
				return true
			}
		}
		return false
	}
	return true
}
