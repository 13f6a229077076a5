package gateway

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// inputBackend is a backend that answers every request with a small chat
// reply and counts the requests that reached it.
func inputBackend(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`))
	}))
	t.Cleanup(backend.Close)
	return backend, &hits
}

// wantRefusal checks that resp is an OpenAI-shaped error with status and
// code, and that the request's event records the refusal with no tokens.
func wantRefusal(t *testing.T, resp *http.Response, body []byte, s *sink, status int, code string) {
	t.Helper()
	if msg, typ, c := refusalOf(body); resp.StatusCode != status || msg == "" || typ == "" || c != code {
		t.Fatalf("got %d %s, want %d in the API's error shape with code %s", resp.StatusCode, body, status, code)
	}
	ev := s.next(t)
	if ev.StatusCode != status || ev.Error != code || ev.Usage != (events.Usage{}) || ev.Reservation != 0 || ev.KeyID != "unit" {
		t.Fatalf("event: status %d error %q usage %+v reservation %d key %q; want %d %q, no tokens, key unit",
			ev.StatusCode, ev.Error, ev.Usage, ev.Reservation, ev.KeyID, status, code)
	}
}

// refusalOf reads an error body in OpenAI's shape, Anthropic's (which
// holds OpenAI's fields) or Ollama's ({"error":"message","type","code"}).
func refusalOf(body []byte) (message, typ, code string) {
	var ollama struct{ Error, Type, Code string }
	if json.Unmarshal(body, &ollama) == nil {
		return ollama.Error, ollama.Type, ollama.Code
	}
	var e struct {
		Error struct{ Message, Type, Code string } `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Error.Message, e.Error.Type, e.Error.Code
}

// TestCompressedRequestBodyIsRefused: a request body in gzip (or any coding
// but identity) gets 415 with the Accept-Encoding the gateway takes, not a
// 400 saying a JSON body is not JSON; its event is published.
func TestCompressedRequestBodyIsRefused(t *testing.T) {
	backend, hits := inputBackend(t)
	gw, s := newTestGateway(t, backend.URL, "")
	plain := `{"model":"m1","messages":[{"role":"user","content":"hello"}]}`
	for _, c := range []struct {
		name, encoding, body string
	}{
		{"gzip", "gzip", string(gzipBytes(t, plain))},
		{"deflate then identity", "deflate, identity", plain},
		{"br", "br", plain},
	} {
		t.Run(c.name, func(t *testing.T) {
			hdr := withKey()
			hdr["Content-Encoding"] = c.encoding
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", c.body, hdr)
			wantRefusal(t, resp, body, s, http.StatusUnsupportedMediaType, "unsupported_content_encoding")
			if got := resp.Header.Get("Accept-Encoding"); got != "identity" {
				t.Fatalf("Accept-Encoding %q, want identity", got)
			}
		})
	}
	if hits.Load() != 0 {
		t.Fatalf("%d compressed requests reached the backend", hits.Load())
	}
	hdr := withKey()
	hdr["Content-Encoding"] = "identity"
	if resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", plain, hdr); resp.StatusCode != 200 {
		t.Fatalf("identity body: %d %s", resp.StatusCode, body)
	}
}

// TestBadBodiesAreExplained: a body the gateway cannot read gets a 400 in
// OpenAI's shape that says what is wrong (a field of the wrong type by name
// and type, as OpenAI's own API does) without Go's type and field names, and
// every one is published as its event, with no tokens.
func TestBadBodiesAreExplained(t *testing.T) {
	backend, hits := inputBackend(t)
	gw, s := newTestGateway(t, backend.URL, "")
	cases := []struct {
		name, body, code, message string
	}{
		{"empty", ``, "invalid_json", "the request body is empty: send a JSON object"},
		{"spaces", "  \n", "invalid_json", "the request body is empty: send a JSON object"},
		{"array", `[{"model":"m1"}]`, "invalid_json", "the request body must be a JSON object"},
		{"string", `"m1"`, "invalid_json", "the request body must be a JSON object"},
		{"null", `null`, "invalid_json", "the request body must be a JSON object"},
		{"cut short", `{"model":`, "invalid_json", "the request body is not valid JSON: unexpected end of JSON input (at byte 9)"},
		{"trailing data", `{"model":"m1"} x`, "invalid_json", "the request body is not valid JSON: invalid character 'x' after top-level value (at byte 16)"},
		{"model a number", `{"model":5}`, "invalid_type", "invalid type for 'model': expected a string, but got a number instead"},
		{"stream a string", `{"model":"m1","stream":"yes"}`, "invalid_type", "invalid type for 'stream': expected a boolean, but got a string instead"},
		{"max_tokens a string", `{"model":"m1","max_tokens":"10"}`, "invalid_type", "invalid type for 'max_tokens': expected an integer, but got a string instead"},
		{"max_tokens a fraction", `{"model":"m1","max_tokens":1.5}`, "invalid_type", "invalid type for 'max_tokens': expected an integer, but got the number 1.5 instead"},
		{"max_tokens past int64", `{"model":"m1","max_tokens":100000000000000000000}`, "invalid_type", "invalid type for 'max_tokens': expected an integer below 2^63, but got the number 100000000000000000000 instead"},
		{"max_tokens too long to quote", `{"model":"m1","max_tokens":1` + strings.Repeat("0", 40) + `}`, "invalid_type", "invalid type for 'max_tokens': expected an integer below 2^63, but got a number instead"},
		{"messages a string", `{"model":"m1","messages":"hi"}`, "invalid_type", "invalid type for 'messages': expected an array, but got a string instead"},
		{"a message a number", `{"model":"m1","messages":[1]}`, "invalid_type", "invalid type for 'messages[0]': expected an object, but got a number instead"},
		{"tool calls an object", `{"model":"m1","messages":[{"role":"user","content":[{"type":"text","text":"a"}]}, {"role":"assistant","tool_calls":{"x":[1]}}]}`, "invalid_type", "invalid type for 'messages[1].tool_calls': expected an array, but got an object instead"},
		{"a function a number, keys as written", `{"model":"m1", "Messages" : [ {"role":"user"} , { "Tool_Calls" : [ {"function":{}}, {"id":"b","FUNCTION":5} ] } ]}`, "invalid_type", "invalid type for 'Messages[1].Tool_Calls[1].FUNCTION': expected an object, but got a number instead"},
		{"options a number", `{"model":"m1","options":7}`, "invalid_type", "invalid type for 'options': expected an object, but got a number instead"},
		{"num_predict a string", `{"model":"m1","options":{"num_predict":"x"}}`, "invalid_type", "invalid type for 'options.num_predict': expected an integer, but got a string instead"},
		{"model too long", `{"model":"` + strings.Repeat("m", maxModelBytes+1) + `"}`, "invalid_model", "the model name is 513 bytes long; at most 512"},
		{"model twice", `{"model":"m2","MODEL":"m1"}`, "ambiguous_field", `the request gives "model" more than once (or under another spelling) with different values: engines disagree on which counts; send it once`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", c.body, withKey())
			wantRefusal(t, resp, body, s, http.StatusBadRequest, c.code)
			var e struct {
				Error struct{ Message string } `json:"error"`
			}
			_ = json.Unmarshal(body, &e)
			if e.Error.Message != c.message {
				t.Fatalf("message %q, want %q", e.Error.Message, c.message)
			}
		})
	}
	if hits.Load() != 0 {
		t.Fatalf("%d bad bodies reached the backend", hits.Load())
	}
}

// TestNonUTF8BodiesAreRefused: a JSON body that is not valid UTF-8 (JSON
// text must be) gets 400 invalid_json naming the first bad byte, on every
// endpoint that takes a body, before it reaches a backend; its event carries
// no request body, as for any body the gateway refuses, so the event stays
// valid JSON.
func TestNonUTF8BodiesAreRefused(t *testing.T) {
	backend, hits := inputBackend(t)
	gw, s := newTestGateway(t, backend.URL, "")
	cases := []struct {
		name, body, message string
	}{
		{"0xff in a string", "{\"model\":\"m\xff\",\"messages\":[]}", "the request body is not valid UTF-8 (at byte 12)"},
		{"sequence cut short", "{\"model\":\"m1\",\"x\":\"\xe2\x82\"}", "the request body is not valid UTF-8 (at byte 20)"},
		{"overlong", "{\"model\":\"m1\",\"x\":\"\xc0\xaf\"}", "the request body is not valid UTF-8 (at byte 20)"},
		{"surrogate", "{\"model\":\"m1\",\"x\":\"\xed\xa0\x80\"}", "the request body is not valid UTF-8 (at byte 20)"},
		{"outside a string", "{\"model\":\"m1\"}\x80", "the request body is not valid UTF-8 (at byte 15)"},
	}
	for _, path := range proxiedPOST {
		for _, c := range cases {
			t.Run(path+" "+c.name, func(t *testing.T) {
				resp, body := do(t, "POST", gw.URL+path, c.body, withKey())
				wantRefusal(t, resp, body, s, http.StatusBadRequest, "invalid_json")
				if msg, typ, _ := refusalOf(body); msg != c.message || typ != "invalid_request_error" {
					t.Fatalf("%s %q, want invalid_request_error %q", typ, msg, c.message)
				}
			})
		}
	}
	if hits.Load() != 0 {
		t.Fatalf("%d bodies that are not UTF-8 reached the backend", hits.Load())
	}
	s.mu.Lock()
	evs := s.evs
	s.mu.Unlock()
	for _, ev := range evs {
		b, err := ev.AppendJSON(nil)
		if err != nil || !utf8.Valid(b) || !json.Valid(b) || ev.RequestBody != nil {
			t.Fatalf("event %s (err %v): want valid UTF-8 JSON with no request_body", b, err)
		}
	}
	// A valid body with multi-byte characters still goes through.
	if resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[{"role":"user","content":"héllo — 你好 🙂"}]}`, withKey()); resp.StatusCode != 200 {
		t.Fatalf("UTF-8 body: %d %s", resp.StatusCode, body)
	}
}

// TestGETEndpointsAnswerHEAD: every GET endpoint of the gateway's listener
// (the model lists, /api/tags through a key whose list is filtered, and
// /healthz, /readyz, /metrics) answers HEAD as GET, with the GET's status
// and headers and no body; a proxied HEAD reaches the backend as a GET. The
// API's POST endpoints still refuse HEAD with 405.
func TestGETEndpointsAnswerHEAD(t *testing.T) {
	const tags = `{"models":[{"name":"m1","model":"m1"},{"name":"m3","model":"m3"}]}`
	methods := make(chan string, 10)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/tags" {
			methods <- r.Method
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, tags)
	}))
	t.Cleanup(backend.Close)
	const limited = "sk-llmproxy-unit-limited-0046"
	yaml := fmt.Sprintf("backends: [{url: %q, models: [m1, m3]}]\napi_keys:\n  - {key: %q, id: unit}\n  - {key: %q, id: limited, allowed_models: [m1]}\n",
		backend.URL, testKey, limited)
	gw, _ := serveConfig(t, parseConfig(t, yaml))
	for _, c := range []struct {
		path string
		hdr  map[string]string
	}{
		{"/v1/models", withKey()},
		{"/api/tags", withKey()},
		{"/api/tags", map[string]string{"Authorization": "Bearer " + limited}},
		{"/healthz", nil},
		{"/readyz", nil},
		{"/metrics", nil},
	} {
		get, getBody := do(t, "GET", gw.URL+c.path, "", c.hdr)
		head, body := do(t, "HEAD", gw.URL+c.path, "", c.hdr)
		if get.StatusCode != 200 || head.StatusCode != 200 || len(body) != 0 || head.Header.Get("Content-Type") != get.Header.Get("Content-Type") {
			t.Errorf("HEAD %s: %d %q (%d bytes); GET: %d %q", c.path, head.StatusCode, head.Header.Get("Content-Type"), len(body), get.StatusCode, get.Header.Get("Content-Type"))
		}
		if c.path != "/metrics" && head.ContentLength != int64(len(getBody)) {
			t.Errorf("HEAD %s: Content-Length %d, want the GET's %d", c.path, head.ContentLength, len(getBody))
		}
	}
	// Over HTTP/2 too, the HEAD gets the GET's head and no body.
	h2 := httptest.NewUnstartedServer(gw.Config.Handler)
	h2.EnableHTTP2 = true
	h2.StartTLS()
	defer h2.Close()
	req, _ := http.NewRequest("HEAD", h2.URL+"/api/tags", nil)
	req.Header.Set("Authorization", "Bearer "+testKey)
	resp, err := h2.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || resp.ContentLength != int64(len(tags)) || len(body) != 0 {
		t.Errorf("HEAD /api/tags over %s: %d, Content-Length %d, %d bytes", resp.Proto, resp.StatusCode, resp.ContentLength, len(body))
	}
	// Each request had its reply, so what reached the backend is in methods.
	var got []string
	for len(methods) > 0 {
		got = append(got, <-methods)
	}
	if !slices.Equal(got, []string{"GET", "GET", "GET", "GET", "GET"}) { // /api/tags's two GETs and three HEADs
		t.Errorf("the backend was asked for /api/tags with %v, want GET five times", got)
	}
	// Every GET route, including any added later, has its HEAD.
	routes := map[string]bool{}
	for _, r := range gw.Config.Handler.(*echo.Echo).Routes() {
		routes[r.Method+" "+r.Path] = true
	}
	for route := range routes {
		if path, ok := strings.CutPrefix(route, "GET "); ok && !routes["HEAD "+path] {
			t.Errorf("GET %s has no HEAD", path)
		}
	}
	if resp, _ := do(t, "HEAD", gw.URL+"/v1/chat/completions", "", withKey()); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("HEAD /v1/chat/completions: %d, want 405", resp.StatusCode)
	}
}

// TestUnknownPathsAreNamedAsSent: a path the gateway does not serve gets
// 404 naming the path as the client sent it, so that an encoded slash does
// not read as a refusal of the real endpoint; a known path with the wrong
// method gets 405.
func TestUnknownPathsAreNamedAsSent(t *testing.T) {
	backend, hits := inputBackend(t)
	gw, _ := newTestGateway(t, backend.URL, "")
	for _, c := range []struct {
		method, path string
		status       int
		message      string
	}{
		{"POST", "/v1/chat%2Fcompletions", 404, "unknown path /v1/chat%2Fcompletions"},
		{"POST", "/v1/chat/completions/", 404, "unknown path /v1/chat/completions/"},
		{"POST", "/v1//chat/completions", 404, "unknown path /v1//chat/completions"},
		{"GET", "/v1/models/m1", 404, "unknown path /v1/models/m1"},
		{"GET", "/v1/chat/completions", 405, "method GET is not allowed on /v1/chat/completions"},
		{"POST", "/v1/models", 405, "method POST is not allowed on /v1/models"},
	} {
		resp, body := do(t, c.method, gw.URL+c.path, `{"model":"m1"}`, withKey())
		var e struct {
			Error struct{ Message, Type, Code string } `json:"error"`
		}
		if resp.StatusCode != c.status || json.Unmarshal(body, &e) != nil || e.Error.Message != c.message || e.Error.Type == "" || e.Error.Code == "" {
			t.Errorf("%s %s: %d %s, want %d %q", c.method, c.path, resp.StatusCode, body, c.status, c.message)
		}
	}
	if hits.Load() != 0 {
		t.Fatalf("%d requests reached the backend", hits.Load())
	}
}

// TestUnroutedRequestsAreLogged: a request no route takes (a client whose
// base URL lacks /v1, a wrong method) has its access line, with the path as
// sent (bounded) and the id its reply names, and no key or query in it.
func TestUnroutedRequestsAreLogged(t *testing.T) {
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q}]\nlogging: {redact: ['sk-proj-[a-z]+']}\n", "http://127.0.0.1:1", testKey))
	lines := make(chan map[string]string, 10)
	g, err := New(Options{Config: cfg, Events: newSink(), Logger: slog.New(recordHandler{out: lines})})
	if err != nil {
		t.Fatal(err)
	}
	// serve has the gateway answer req and returns the reply and the
	// access line it wrote (nil: none).
	serve := func(req *http.Request) (*httptest.ResponseRecorder, map[string]string) {
		w := httptest.NewRecorder()
		g.Handler().ServeHTTP(w, req)
		for len(lines) > 0 {
			if m := <-lines; m["msg"] == "request" {
				return w, m
			}
		}
		return w, nil
	}
	long := "/" + strings.Repeat("x", 2*maxLoggedPath)
	for _, c := range []struct {
		method, target, path string
		status               int
		code                 string
	}{
		{"POST", "/chat/completions?key=" + testKey, "/chat/completions", 404, "unknown_url"},
		{"GET", "/v1/chat/completions", "/v1/chat/completions", 405, "method_not_allowed"},
		{"GET", long, long[:maxLoggedPath] + "…", 404, "unknown_url"},
		// The key in the path too (a base URL with the key in it).
		{"POST", "/" + testKey + "/v1/chat/completions", "/[REDACTED]/v1/chat/completions", 404, "unknown_url"},
		// A key made by llmproxy keys, other than the one presented.
		{"POST", "/foo/sk-llmproxy-b2imTaK5uXKrz7OM9OcYGCz3Y2TNT5Ek/x", "/foo/[REDACTED]/x", 404, "unknown_url"},
		// A key of the file with the public prefix, dashes and all.
		{"POST", "/v2/sk-llmproxy-demo-123_x/chat", "/v2/[REDACTED]/chat", 404, "unknown_url"},
		// Percent-encoded, a made key or the one presented.
		{"POST", "/x/%73k-llmproxy-ZyXwVuTsRqPoNmLkJiHgFeDcBa987654/y%20z", "/x/[REDACTED]/y z", 404, "unknown_url"},
		{"POST", "/x/" + strings.Replace(testKey, "u", "%75", 1) + "/y", "/x/[REDACTED]/y", 404, "unknown_url"},
		// A rule of logging.redact, for a key without the header.
		{"POST", "/v1/sk-proj-abcdefghij/chat", "/v1/[REDACTED]/chat", 404, "unknown_url"},
	} {
		req := httptest.NewRequest(c.method, c.target, strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		w, l := serve(req)
		switch {
		case w.Code != c.status:
			t.Errorf("%s %s: %d, want %d", c.method, c.target, w.Code, c.status)
		case l == nil:
			t.Errorf("%s %s: no access line", c.method, c.target)
		case l["path"] != c.path || l["method"] != c.method || l["status"] != strconv.Itoa(c.status) || l["error"] != c.code:
			t.Errorf("%s %s: access line %v, want path %q, status %d, error %s", c.method, c.target, l, c.path, c.status, c.code)
		case l["request_id"] == "" || l["request_id"] != w.Header().Get("X-Request-Id"):
			t.Errorf("%s %s: access line's request_id %q, reply's X-Request-Id %q", c.method, c.target, l["request_id"], w.Header().Get("X-Request-Id"))
		}
		for _, v := range l {
			if strings.Contains(v, testKey) {
				t.Errorf("%s %s: the access line holds the key: %v", c.method, c.target, l)
			}
		}
		// The reply quotes the path as the line does.
		if b := w.Body.String(); !strings.Contains(b, c.path) || strings.Contains(b, testKey) || len(b) > 1000 {
			t.Errorf("%s %s: reply %.300s, want it to quote %q", c.method, c.target, b, c.path)
		}
	}
	// The key as the method is not quoted back either.
	if w, _ := serve(httptest.NewRequest(testKey, "/v1/chat/completions", nil)); strings.Contains(w.Body.String(), testKey) {
		t.Errorf("a key as the method: reply %s", w.Body.String())
	}
	// A method of 120,000 bytes is quoted in 32, in the line and the reply.
	w, l := serve(httptest.NewRequest(strings.Repeat("X", 120000), "/v1/chat/completions", nil))
	if l == nil || len(l["method"]) > maxLoggedMethod+len("…") || w.Body.Len() > 1000 {
		t.Errorf("a long method: line's method %d bytes, reply %d bytes", len(l["method"]), w.Body.Len())
	}
	// A made key as the method (curl -X with the wrong argument) is not
	// quoted, not even the part that fits the bound.
	if _, l := serve(httptest.NewRequest("sk-llmproxy-ZyXwVuTsRqPoNmLkJiHgFeDcBa987654", "/v1/chat/completions", nil)); l == nil || l["method"] != "[REDACTED]" {
		t.Errorf("a key as the method: access line %v", l)
	}
}

// TestBackendIsToldTheBodyIsJSON: a body the gateway read as a JSON object
// reaches the backend as application/json whatever Content-Type the client
// gave (curl -d sends a form type; vLLM and TGI refuse anything but JSON
// with 415); a client's own application/json is passed on as written.
func TestBackendIsToldTheBodyIsJSON(t *testing.T) {
	got := make(chan string, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Content-Type")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}]}`))
	}))
	t.Cleanup(backend.Close)
	gw, _ := newTestGateway(t, backend.URL, "")
	for _, c := range []struct{ client, want string }{
		{"", "application/json"},
		{"application/x-www-form-urlencoded", "application/json"},
		{"text/plain", "application/json"},
		{"not a media type;;", "application/json"},
		{"application/json", "application/json"},
		{"application/json; charset=utf-8", "application/json; charset=utf-8"},
	} {
		req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m1"}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		if c.client != "" {
			req.Header.Set("Content-Type", c.client)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("Content-Type %q: %d", c.client, resp.StatusCode)
		}
		if ct := <-got; ct != c.want {
			t.Errorf("client's Content-Type %q reached the backend as %q, want %q", c.client, ct, c.want)
		}
	}
}

// TestOversizedBodiesAreRefusedWithTheirEvent: a body over
// server.max_body_bytes gets 413 whether its length is declared or it
// comes chunked, and one declared too large behind Expect: 100-continue is
// refused before the client is asked for it; each has its event, with no
// tokens.
func TestOversizedBodiesAreRefusedWithTheirEvent(t *testing.T) {
	backend, hits := inputBackend(t)
	gw, s := newTestGateway(t, backend.URL, "") // max_body_bytes: 4096
	big := `{"model":"m1","x":"` + strings.Repeat("a", 5000) + `"}`
	t.Run("declared", func(t *testing.T) {
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", big, withKey())
		wantRefusal(t, resp, body, s, http.StatusRequestEntityTooLarge, "request_too_large")
	})
	t.Run("chunked", func(t *testing.T) {
		req, _ := http.NewRequest("POST", gw.URL+"/v1/chat/completions", io.MultiReader(strings.NewReader(big)))
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		wantRefusal(t, resp, body, s, http.StatusRequestEntityTooLarge, "request_too_large")
	})
	t.Run("expect 100-continue", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(gw.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", testKey, len(big))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		wantRefusal(t, resp, body, s, http.StatusRequestEntityTooLarge, "request_too_large")
	})
	if hits.Load() != 0 {
		t.Fatalf("%d oversized requests reached the backend", hits.Load())
	}
}

// TestMessagesErrorsInAnthropicShape: the gateway's own errors on
// Anthropic's Messages API, and on the paths under it it does not serve,
// come in Anthropic's envelope, with Anthropic's error type for the status
// (its SDKs and Claude Code read both), OpenAI's three fields still inside;
// every other endpoint keeps OpenAI's shape.
func TestMessagesErrorsInAnthropicShape(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html>bad gateway</html>")
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	type shape struct {
		Type  *string `json:"type"`
		Error struct{ Type, Message, Code string }
	}
	for _, c := range []struct {
		method, path, key, body string
		status                  int
		typ, code, topType      string
		event                   bool // a path no route takes has none
	}{
		{"POST", "/v1/messages", "sk-wrong-key-000000", `{"model":"m1"}`, 401, "authentication_error", "invalid_api_key", "error", true},
		{"POST", "/v1/messages", testKey, `{"model":5}`, 400, "invalid_request_error", "invalid_type", "error", true},
		{"POST", "/v1/messages", testKey, `{"model":"m1","max_tokens":8}`, 502, "api_error", "backend_error", "error", true},
		{"POST", "/v1/messages/count_tokens", testKey, `{"model":"m1"}`, 404, "not_found_error", "unknown_url", "error", false},
		{"GET", "/v1/messages", testKey, ``, 405, "invalid_request_error", "method_not_allowed", "error", false},
		{"POST", "/v1/chat/completions", "sk-wrong-key-000000", `{"model":"m1"}`, 401, "invalid_request_error", "invalid_api_key", "", true},
	} {
		resp, body := do(t, c.method, gw.URL+c.path, c.body, map[string]string{"Authorization": "Bearer " + c.key})
		var got shape
		if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != c.status || got.Error.Type != c.typ ||
			got.Error.Code != c.code || got.Error.Message == "" || (got.Type == nil) != (c.topType == "") || got.Type != nil && *got.Type != c.topType {
			t.Errorf("%s %s with %s = %d %s; want %d, type %q, error.type %q, code %q", c.method, c.path, c.body, resp.StatusCode, body, c.status, c.topType, c.typ, c.code)
		}
		if c.event {
			s.next(t)
		}
	}
}
