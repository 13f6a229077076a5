package gateway

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

func TestBackendAcceptEncoding(t *testing.T) {
	cases := []struct {
		name     string
		client   []string // nil: no header
		identity bool
		want     []string // nil: no header
	}{
		{"stream, gzip", []string{"gzip"}, true, []string{"identity"}},
		{"stream, br", []string{"br"}, true, []string{"identity"}},
		{"stream, none", nil, true, []string{"identity"}},
		{"none", nil, false, nil},
		{"gzip", []string{"gzip"}, false, []string{"gzip"}},
		{"x-gzip", []string{"x-gzip"}, false, []string{"gzip"}},
		{"deflate", []string{"deflate"}, false, []string{"deflate"}},
		{"browser", []string{"gzip, deflate, br, zstd"}, false, []string{"gzip, deflate"}},
		{"two lines", []string{"br", "Deflate;q=0.5"}, false, []string{"deflate"}},
		{"br and zstd only", []string{"br, zstd"}, false, []string{"identity"}},
		{"identity", []string{"identity"}, false, []string{"identity"}},
		{"gzip refused", []string{"gzip;q=0, deflate"}, false, []string{"deflate"}},
		{"gzip refused, spaced", []string{"gzip ; q=0.000, br"}, false, []string{"identity"}},
		{"gzip low q", []string{"gzip;q=0.001"}, false, []string{"gzip"}},
		{"wildcard", []string{"*"}, false, []string{"gzip, deflate"}},
		{"wildcard but gzip", []string{"*, gzip;q=0"}, false, []string{"deflate"}},
		{"wildcard refused", []string{"*;q=0, gzip"}, false, []string{"gzip"}},
		{"empty", []string{""}, false, []string{"identity"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			if c.client != nil {
				h["Accept-Encoding"] = c.client
			}
			setBackendAcceptEncoding(h, c.identity)
			got, ok := h["Accept-Encoding"]
			if ok != (c.want != nil) || len(got) != len(c.want) || len(got) > 0 && got[0] != c.want[0] {
				t.Fatalf("Accept-Encoding %q, want %q", got, c.want)
			}
		})
	}
	browser := []string{"gzip, deflate, br, zstd"}
	h := http.Header{"Accept-Encoding": browser}
	if n := testing.AllocsPerRun(100, func() {
		h["Accept-Encoding"] = browser
		setBackendAcceptEncoding(h, false)
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

func TestBackendQuery(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"api-version=2024-10-21", "api-version=2024-10-21"},
		{"key=sk-1", ""},
		{"a=1&key=sk-1&b=2", "a=1&b=2"},
		{"api_key=sk-1&API-KEY=sk-2&Key", ""},
		{"%6Bey=sk-1&keys=x&monkey=y", "keys=x&monkey=y"},
		{"a=1&&b", "a=1&&b"},
		{"apikey=sk-1&a=1&ApiKey=sk-2", "a=1"},
		{"access_token=sk-1&Access_Token=sk-2&tokens=x", "tokens=x"},
		{"access%5Ftoken=sk-1&b=2", "b=2"},
		// A ';' separates parameters too for the servers that split on
		// it: no key goes through behind one.
		{"x=1;key=sk-1", "x=1"},
		{"key=sk-1;x=1", "x=1"},
		{"a=1;API_KEY=sk-1&b=2;apikey=sk-2;c=3", "a=1;b=2;c=3"},
		{"a=1&access_token=sk-1;b=2", "a=1&b=2"},
		{"a=1;b=x%3Bkey=y&c", "a=1;b=x%3Bkey=y&c"},
		{"a=1;b;;c=%20&", "a=1;b;;c=%20&"},
		{"key=sk-1&a=1&", "a=1&"},
	}
	for _, c := range cases {
		if got := backendQuery(c.in); got != c.want {
			t.Errorf("backendQuery(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// FuzzBackendQuery: whatever the query, what the backend gets holds no key
// parameter, split on '&' or ';', and every other parameter, as written
// and in order; a query without one is passed on unchanged.
func FuzzBackendQuery(f *testing.F) {
	for _, s := range []string{"", "a=1&key=x", "x=1;key=sk-1", "a=1;API_KEY=sk-1&b=2;apikey=sk-2;c=3", "%6Bey=1&&;b", "access%5Ftoken=x;"} {
		f.Add(s)
	}
	params := func(q string) (kept []string, keys int) {
		for _, p := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' }) {
			if isKeyParam(p) {
				keys++
			} else {
				kept = append(kept, p)
			}
		}
		return kept, keys
	}
	f.Fuzz(func(t *testing.T, q string) {
		got := backendQuery(q)
		in, keys := params(q)
		out, left := params(got)
		if left != 0 || !slices.Equal(in, out) || keys == 0 && got != q {
			t.Fatalf("backendQuery(%q) = %q", q, got)
		}
	})
}

// TestForwardedForReachesTheBackend: the backend learns who asked in
// X-Forwarded-For, as behind any reverse proxy. A direct client's own
// X-Forwarded-For (and X-Real-Ip, Forwarded) is not passed on, so it cannot
// pose as another address to the backend; a trusted proxy's chain is kept
// and the proxy appended.
func TestForwardedForReachesTheBackend(t *testing.T) {
	got := make(chan http.Header, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		_, _ = w.Write([]byte(`{}`))
	}))
	defer backend.Close()
	spoof := map[string]string{
		"Authorization":   "Bearer " + testKey,
		"X-Forwarded-For": "203.0.113.9",
		"X-Real-Ip":       "203.0.113.9",
		"Forwarded":       "for=203.0.113.9",
		// Claims about the client's connection a proxy would make.
		"X-Forwarded-Host":         "evil.example",
		"X-Forwarded-Proto":        "https",
		"True-Client-Ip":           "203.0.113.9",
		"Cf-Connecting-Ip":         "203.0.113.9",
		"X-Envoy-External-Address": "203.0.113.9",
		"Fly-Client-Ip":            "203.0.113.9",
		"X-Original-Url":           "/admin",
		"X-Forwarded-Client-Cert":  "By=spiffe://x",
		"X-Forwarded-Prefix":       "/admin",
		"X-Forwarded-Uri":          "/admin",
		"X-Original-Uri":           "/admin",
		"X-Host":                   "evil.example",
		"X-Forwarded-Ssl":          "on",
		"X-Forwarded-Protocol":     "https",
		"Cf-Visitor":               `{"scheme":"https"}`,
		"X-Envoy-Original-Path":    "/admin",
		"Remote-Addr":              "203.0.113.9",
		// Spelled with underscores, which CGI-style servers read as the
		// same header.
		"X_Forwarded_For": "203.0.113.9",
		"X-Real_Ip":       "203.0.113.9",
		// Not a claim: the client's own, for the backend's logs.
		"User-Agent": "openai-python/1.52",
	}
	cases := []struct {
		name, extra, want, realIP, client string
	}{
		{"direct client", "", "127.0.0.1", "", "127.0.0.1"},
		{"behind a trusted proxy", "trusted_proxies: [127.0.0.1]\n", "203.0.113.9, 127.0.0.1", "203.0.113.9", "203.0.113.9"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			gw, s := newTestGateway(t, backend.URL, c.extra)
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1"}`, spoof)
			if resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			h := <-got
			if xff := h.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != c.want {
				t.Errorf("backend X-Forwarded-For %q, want %q", xff, c.want)
			}
			if h.Get("X-Real-Ip") != c.realIP || (c.realIP == "") != (h.Get("Forwarded") == "") {
				t.Errorf("backend X-Real-Ip %q, Forwarded %q", h.Get("X-Real-Ip"), h.Get("Forwarded"))
			}
			for _, k := range []string{"X-Forwarded-Host", "X-Forwarded-Proto", "True-Client-Ip", "Cf-Connecting-Ip", "X-Envoy-External-Address", "Fly-Client-Ip", "X-Original-Url", "X-Forwarded-Client-Cert",
				"X-Forwarded-Prefix", "X-Forwarded-Uri", "X-Original-Uri", "X-Host", "X-Forwarded-Ssl", "X_forwarded_for", "X-Real_ip",
				"X-Forwarded-Protocol", "Cf-Visitor", "X-Envoy-Original-Path", "Remote-Addr"} {
				if (c.realIP == "") != (h.Get(k) == "") {
					t.Errorf("backend %s %q", k, h.Get(k))
				}
			}
			if ua := h.Get("User-Agent"); ua != "openai-python/1.52" {
				t.Errorf("backend User-Agent %q, want the client's", ua)
			}
			if ev := s.next(t); ev.ClientIP != c.client {
				t.Errorf("event client_ip %q, want %q", ev.ClientIP, c.client)
			}
			// A client that sends none: the backend gets none.
			req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1"}`))
			req.Header.Set("Authorization", "Bearer "+testKey)
			req.Header["User-Agent"] = []string{""}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
			if ua := (<-got).Values("User-Agent"); len(ua) != 0 {
				t.Errorf("backend User-Agent %q for a client that sent none", ua)
			}
			s.next(t)
		})
	}
}

// TestRequestHeadersForTheBackend: what the client sent that is the
// gateway's business does not reach the backend. Expect: 100-continue was
// passed on although the gateway has the whole body before it sends: a
// backend client honouring it waits for a 100 Continue (net/http's up to
// a second) before sending a body it already holds.
func TestRequestHeadersForTheBackend(t *testing.T) {
	src := http.Header{
		"Authorization": {"Bearer sk-x"}, "X-Api-Key": {"sk-x"}, "Api-Key": {"sk-x"}, "Cookie": {"a=b"},
		"Expect": {"100-continue"}, "Connection": {"keep-alive"}, "Te": {"trailers"},
		"Content-Type": {"application/json"}, "X-Custom": {"kept"}, "X-Llmproxy-Request-Id": {"req_posing"},
	}
	dst := http.Header{}
	copyRequestHeader(dst, src, "sk-x")
	for _, k := range []string{"Authorization", "X-Api-Key", "Api-Key", "Cookie", "Expect", "Connection", "Te", "X-Llmproxy-Request-Id"} {
		if v, ok := dst[k]; ok {
			t.Errorf("%s reached the backend: %q", k, v)
		}
	}
	for _, k := range []string{"Content-Type", "X-Custom"} {
		if dst.Get(k) == "" {
			t.Errorf("%s did not reach the backend", k)
		}
	}

	// The request's key anywhere else (a Referer with ?api_key=, another
	// provider's key header) is replaced; the client's header map is
	// left as it was.
	const key = "sk-llmproxy-0123456789abcdef"
	src = http.Header{
		"Referer":        {"https://app.example/chat?api_key=" + key},
		"X-Goog-Api-Key": {key},
		"X-Debug":        {"a", "Bearer " + key, "b " + key},
		"X-Other":        {"sk-llmproxy-not-the-key"},
	}
	dst = http.Header{}
	copyRequestHeader(dst, src, key)
	for k, vv := range dst {
		for _, v := range vv {
			if strings.Contains(v, key) {
				t.Errorf("%s: %q reached the backend", k, v)
			}
		}
	}
	if got := dst["X-Debug"]; len(got) != 3 || got[0] != "a" || got[1] != "Bearer [REDACTED]" || got[2] != "b [REDACTED]" {
		t.Errorf("X-Debug %q", got)
	}
	if dst.Get("Referer") != "https://app.example/chat?api_key=[REDACTED]" || dst.Get("X-Other") != "sk-llmproxy-not-the-key" {
		t.Errorf("Referer %q, X-Other %q", dst.Get("Referer"), dst.Get("X-Other"))
	}
	if src.Get("X-Goog-Api-Key") != key {
		t.Error("the client's own header map was changed")
	}
	// Percent-encoded, as a browser writes a Referer's query.
	dst = http.Header{}
	copyRequestHeader(dst, http.Header{"Referer": {"https://app.example/?foo=%73%6B%2Dllmproxy-0123456789abcdef&x=%2F+y"}}, key)
	if got := dst.Get("Referer"); got != "https://app.example/?foo=[REDACTED]&x=/ y" {
		t.Errorf("percent-encoded key in a Referer: %q", got)
	}
}

// TestQueryWithoutKey: the request's own key in any query parameter, in
// any spelling a server decodes back to it ('+' for a space, percent
// escapes) or as written (a key with '+' or '%' of its own), is replaced;
// parameters without it are kept as written.
func TestQueryWithoutKey(t *testing.T) {
	for _, c := range []struct{ secret, in, want string }{
		{"sk-space key-123456", "x=sk-space+key-123456&y=a+b", "x=%5BREDACTED%5D&y=a+b"},
		{"sk-space key-123456", "x=sk-space%20key-123456", "x=%5BREDACTED%5D"},
		{"sk-plus+key-123456", "x=sk-plus+key-123456", "x=%5BREDACTED%5D"},
		{"sk-plus+key-123456", "x=sk-plus%2Bkey-123456", "x=%5BREDACTED%5D"},
		{"sk-pct%41key-123456", "x=sk-pct%41key-123456;z=1", "x=%5BREDACTED%5D;z=1"},
		{"sk-llmproxy-0123456789", "sk-llmproxy-0123456789&b=%2F", "%5BREDACTED%5D&b=%2F"},
		{"sk-llmproxy-0123456789", "a=%2F+x&b=c", "a=%2F+x&b=c"},
	} {
		if got := queryWithoutKey(c.in, c.secret); got != c.want {
			t.Errorf("queryWithoutKey(%q, %q) = %q, want %q", c.in, c.secret, got, c.want)
		}
	}
}
