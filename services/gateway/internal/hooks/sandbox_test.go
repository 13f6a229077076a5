package hooks

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

func newEngine(t *testing.T, src string, opts Options) *Engine {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.Timeout == 0 {
		opts.Timeout = testTimeout
	}
	e, err := New([]Script{{Name: "test.lua", Source: src}}, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

func TestSandboxHidesDangerousGlobals(t *testing.T) {
	e := newEngine(t, `
local hidden = {"os", "io", "load", "loadstring", "dofile", "loadfile", "require",
  "module", "package", "debug", "collectgarbage", "getfenv", "setfenv",
  "coroutine", "newproxy"}
local function check(sealed)
  for _, name in ipairs(hidden) do
    assert(type(_G[name]) == "nil", name .. " is reachable")
  end
  assert(type(string.dump) == "nil", "string.dump is reachable")
  assert(type(string.format) == "function" and type(table.concat) == "function"
    and type(math.floor) == "function", "a safe library is missing")
  if sealed then
    assert(getmetatable(_G) == false, "the environment's metatable is reachable")
  end
end
check()
function on_request(req) check(true) end
`, Options{})
	if _, err := e.OnRequest(context.Background(), &Request{}); err != nil {
		t.Fatal(err)
	}
}

// TestLibrariesAreReadOnly: the library tables the scripts of a state
// share cannot be written, at load or in a hook, directly or with rawset,
// nor reached through a metatable; so one script cannot change another's
// string.upper, and a request cannot leave a value in them for the next.
func TestLibrariesAreReadOnly(t *testing.T) {
	e, err := New([]Script{
		{Name: "a.lua", Source: `
assert(not pcall(function() string.upper = string.lower end), "string written at load")
local writes = {
  function() string.upper = function() return "x" end end,
  function() rawset(string, "upper", string.lower) end,
  function() table.concat = nil end,
  function() math.pi = 3 end,
  function() llmproxy.now = nil end,
  function() getmetatable("").__index = {} end,
  function() setmetatable(string, {}) end,
  function() llmproxy.cache = {} end,
}
function on_route(req)
  for i, w in ipairs(writes) do
    local ok, err = pcall(w)
    if ok then error("write " .. i .. " went through") end
  end
  assert(getmetatable(string) == false and getmetatable("") == false, "a metatable is reachable")
  local t = {}
  rawset(t, "k", 1)
  assert(t.k == 1, "rawset no longer works on a script's own table")
  return nil
end`},
		{Name: "b.lua", Source: `
function on_route(req)
  assert(llmproxy.cache == nil, "a value was left in llmproxy")
  return ("abc"):upper() .. string.upper("d") .. table.concat({"e"}) .. tostring(math.pi > 3.14)
end`},
	}, Options{Logger: quietLogger(), Timeout: testTimeout, PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if got, err := e.OnRoute(context.Background(), &Request{}); err != nil || got != "ABCDetrue" {
			t.Fatalf("OnRoute = %q, %v; want the libraries unchanged", got, err)
		}
	}
}

// TestArrayMarkerIsSealed: the metatable that marks JSON arrays is one per
// state, shared by every array of every request it serves, so a hook that
// could write to it would change how later requests' arrays index and
// encode.
func TestArrayMarkerIsSealed(t *testing.T) {
	e := newEngine(t, `
function on_route(req)
  if req.headers:get("X-Poison") then
    local mt = getmetatable(llmproxy.array())
    mt.__index = function() return "poisoned" end
    mt.__jsonarray = nil
    return nil
  end
  local msgs = req.body:table().messages
  assert(msgs.foo == nil, "an array indexes through a value another request left")
  req.body:replace({messages = msgs})
  return req.body:raw()
end`, Options{PoolSize: 1})
	poison := &Request{Headers: http.Header{"X-Poison": {"1"}}}
	if _, err := e.OnRoute(context.Background(), poison); err == nil {
		t.Error("a hook wrote to the array marker")
	}
	if got, err := e.OnRoute(context.Background(), &Request{Body: []byte(`{"messages":[]}`)}); err != nil || got != `{"messages":[]}` {
		t.Fatalf("OnRoute = %q, %v; want the array marker unchanged", got, err)
	}
}

// TestSharedGlobalsAreUnreachable: a script's top-level code cannot reach
// the global table every script of a state reads through (its
// environment's metatable), so it cannot keep it to replace another
// script's string library, or anything else, from a hook.
func TestSharedGlobalsAreUnreachable(t *testing.T) {
	e, err := New([]Script{
		{Name: "a.lua", Source: `
assert(getmetatable(_G) == false, "the environment's metatable is reachable at load")
function on_route(req) return nil end`},
		{Name: "b.lua", Source: `
function on_route(req) return string.upper("b") end`},
	}, Options{Logger: quietLogger(), Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.OnRoute(context.Background(), &Request{}); err != nil || got != "B" {
		t.Fatalf("OnRoute = %q, %v", got, err)
	}
}

func TestSyntaxErrorNamesFileAndLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "broken.lua")
	if err := os.WriteFile(path, []byte("function on_request(req)\n  local x = = 1\nend\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load([]string{path}, Options{Logger: quietLogger()})
	if err == nil || !strings.HasPrefix(err.Error(), path+":2: ") {
		t.Fatalf("Load error = %v, want prefix %q", err, path+":2: ")
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"unterminated function", "function on_auth(req)\n", "test.lua: at end of file"},
		{"top-level error", "local x = 1\nerror('boom')\n", "test.lua:2: boom"},
		{"top-level runaway", "while true do end", "timed out: test.lua: top-level code ran past"},
		// A hook bound to something else would drop the hook silently,
		// on_auth's check among them.
		{"hook not a function", "on_auth = 5\n", "test.lua: on_auth is a number, not a function"},
		{"hook a table", "on_request = {}\n", "test.lua: on_request is a table, not a function"},
		{"error with a table", "error({code = 418})\n", `error value {"code":418}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New([]Script{{Name: "test.lua", Source: tc.src}}, Options{InitTimeout: 200 * time.Millisecond, Logger: quietLogger()})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := Load([]string{"/nonexistent/x.lua"}, Options{}); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
	// A syntax error near a literal names the line, not the literal: a
	// script may keep a secret there (a tenant's signing key).
	for _, src := range []string{
		"local keys = { acme = \"acme-SECRET-signing2 }\n",
		"local keys = { acme = \"acme-SECRET-signing2\" beta }\n",
		"local k = 'acme-SECRET-signing2' x\n",
	} {
		_, err := New([]Script{{Name: "test.lua", Source: src}}, Options{Logger: quietLogger()})
		if err == nil || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), "test.lua") {
			t.Errorf("%q: New error = %v, want the line without the literal", src, err)
		}
	}
	// Other tokens are still quoted.
	if _, err := New([]Script{{Name: "test.lua", Source: "local x = = 1\n"}}, Options{Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "near '='") {
		t.Errorf("a syntax error near an operator: %v", err)
	}
}

func TestRuntimeErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"error names file and line", "function on_request(req)\n  local t = nil\n  return t.x\nend", "test.lua:3:"},
		{"undeclared global", "function on_request(req)\n  leaked = req.path\nend", `test.lua:2: assignment to undeclared global "leaked"`},
		{"bad return", "function on_request(req) return 42 end", "on_request: returned a number"},
		{"bad status", "function on_request(req) return {status = 200} end", "rejection status 200"},
		{"status as a string", "function on_request(req) return {status = '429'} end", "status is a string, want a number"},
		{"fractional status", "function on_request(req) return {status = 429.5} end", "rejection status 429.5"},
		{"message as a table", "function on_request(req) return {message = {}} end", "message is a table, want a string"},
		{"code as a boolean", "function on_request(req) return {code = true} end", "code is a boolean, want a string"},
		{"deep recursion", "local function f(n) return 1 + f(n + 1) end\nfunction on_request(req) return f(1) end", "stack overflow"},
		{"huge string.rep", "function on_request(req) local s = string.rep('x', 1e9) end", "string.rep: result longer"},
		{"req is read-only", "function on_request(req) req.path = '/x' end", "req.path is read-only"},
		{"table.insert into a library", "function on_request(req) table.insert(string, req.path) end", "table.insert: string is read-only"},
		{"table.insert into the environment", "function on_request(req) table.insert(_G, req.path) end", "table.insert: the global environment cannot be changed"},
		{"table.sort of a library", "function on_request(req) table.sort(math) end", "table.sort: math is read-only"},
		{"rawset of an undeclared global", "function on_request(req)\n  rawset(_G, 'leaked', req.path)\nend", `assignment to undeclared global "leaked"`},
		{"error with a table", "function on_request(req) error({code = 418, why = 'teapot'}) end", `error value {"code":418,"why":"teapot"}`},
		{"set on non-JSON body", "function on_request(req) req.body:set('a', 1) end", "body is not JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, tc.src, Options{})
			_, err := e.OnRequest(context.Background(), &Request{Path: "/v1", Body: []byte("not json")})
			if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("OnRequest error = %v, want ErrScript containing %q", err, tc.want)
			}
			// The failed state was dropped; a new one serves the next call.
			_, err = e.OnRequest(context.Background(), &Request{Path: "/v1", Body: []byte("not json")})
			if !errors.Is(err, ErrScript) {
				t.Fatalf("second call error = %v", err)
			}
		})
	}
}

func TestGlobalsDefinedAtLoadStayPerState(t *testing.T) {
	e := newEngine(t, `
count = 0
function on_route(req)
  count = count + 1
  return tostring(count)
end`, Options{PoolSize: 1})
	for _, want := range []string{"1", "2"} {
		got, err := e.OnRoute(context.Background(), &Request{})
		if err != nil || got != want {
			t.Fatalf("OnRoute = %q, %v; want %q", got, err, want)
		}
	}
}

func TestScriptsChainInOrder(t *testing.T) {
	e, err := New([]Script{
		{Name: "a.lua", Source: `
function on_request(req) req.body:set("a", 1) end
function on_route(req) return nil end
function on_auth(req) return nil end`},
		{Name: "b.lua", Source: `
function on_request(req)
  req.body:set("b", req.body:get("a") + 1)
  return {status = 429, code = "tenant_busy"}
end
function on_route(req) return "second" end
function on_auth(req) return {id = "k1", limits = {requests_per_minute = 5}} end`},
		{Name: "c.lua", Source: `
function on_request(req) error("must not run after a rejection") end
function on_route(req) return "third" end`},
	}, Options{Logger: quietLogger(), Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	r := &Request{Body: []byte(`{}`)}
	rej, err := e.OnRequest(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	want := Rejection{Status: 429, Message: DefaultRejectMessage, Code: "tenant_busy"}
	if rej == nil || *rej != want {
		t.Errorf("rejection = %+v, want %+v", rej, want)
	}
	jsonEqual(t, r.Body, `{"a":1,"b":2}`)
	if b, err := e.OnRoute(context.Background(), r); err != nil || b != "second" {
		t.Errorf("OnRoute = %q, %v", b, err)
	}
	if id, err := e.OnAuth(context.Background(), r); err != nil || id == nil || id.ID != "k1" || !id.Allowed || id.Limits["requests_per_minute"] != 5 {
		t.Errorf("OnAuth = %+v, %v", id, err)
	}
}

func TestOnResponse(t *testing.T) {
	e := newEngine(t, `
function on_response(req, resp)
  if resp.status == 500 then
    resp.status = 503
  end
  resp.headers:set("X-Served-By", "llmproxy")
  resp.headers:del("Server")
  local model = resp.body:get("model")
  if model then
    resp.body:set("model", req.body:get("model"))
  end
end`, Options{})
	r := &Request{Body: []byte(`{"model":"gpt-4o"}`)}
	p := &Response{Status: 500, Headers: http.Header{"Server": {"vllm"}}, Body: []byte(`{"model":"qwen2.5-72b","choices":[]}`)}
	if err := e.OnResponse(context.Background(), r, p); err != nil {
		t.Fatal(err)
	}
	if p.Status != 503 || p.Headers.Get("X-Served-By") != "llmproxy" || p.Headers.Get("Server") != "" {
		t.Errorf("response = %d %v", p.Status, p.Headers)
	}
	jsonEqual(t, p.Body, `{"model":"gpt-4o","choices":[]}`)
}

func TestRequestFieldsAndHelpers(t *testing.T) {
	e := newEngine(t, `
function on_route(req)
  assert(req.method == "POST" and req.path == "/v1/chat/completions")
  assert(req.client_ip == "10.0.0.7")
  assert(req.key.id == "k1" and req.key.name == "ci" and req.key.user_id == "u1")
  assert(req.headers:get("x-custom") == "a" and #req.headers:values("X-Custom") == 2)
  assert(req.headers:get("missing") == nil)
  assert(req.body:get("stream_options.include_usage") == true)
  assert(req.body:get("messages.1.role") == "user")
  assert(req.body:get("messages.9.role") == nil)
  req.body:set("stream_options.include_usage", nil)
  req.body:set("metadata.tenant.id", "t1")
  req.body:set("messages.2", {role = "assistant", content = "ok"})
  local t = req.body:table()
  assert(t.messages[2].role == "assistant")
  t.model = "changed-copy"
  assert(req.body:get("model") == "m", "table() must be a copy")

  local s = llmproxy.json_encode({a = {1, 2, 3}, b = llmproxy.array(), c = llmproxy.null})
  assert(s == '{"a":[1,2,3],"b":[],"c":null}', s)
  local v = llmproxy.json_decode('{"x":[1,{"y":null}]}')
  assert(v.x[2].y == llmproxy.null)
  assert(select(2, llmproxy.json_decode("{")) ~= nil)
  assert(llmproxy.sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  assert(llmproxy.hmac_sha256("key", "The quick brown fox jumps over the lazy dog") ==
    "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")
  assert(llmproxy.base64_encode("hi?") == "aGk/")
  assert(llmproxy.base64_decode("aGk/") == "hi?" and llmproxy.base64_decode("aGk_") == "hi?")
  assert(llmproxy.base64_decode("!!") == nil)
  assert(llmproxy.now() == 1700000000.5)
  llmproxy.log("info", "routing")
  print("debug line")
  return "ok"
end`, Options{Now: fixedNow})
	r := &Request{
		Method: "POST", Path: "/v1/chat/completions", ClientIP: "10.0.0.7",
		Key:     KeyInfo{ID: "k1", Name: "ci", UserID: "u1"},
		Headers: http.Header{"X-Custom": {"a", "b"}},
		Body:    []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}`),
	}
	if got, err := e.OnRoute(context.Background(), r); err != nil || got != "ok" {
		t.Fatalf("OnRoute = %q, %v", got, err)
	}
	// on_route's body edits are not written back: only on_request may
	// rewrite the request.
	if !strings.Contains(string(r.Body), "include_usage") {
		t.Errorf("on_route changed the body: %s", r.Body)
	}
}

// TestDeadlineStartsWithTheState: making a Lua state for a call (its
// scripts' top level run, bounded by InitTimeout) does not count against
// the hook's own Timeout, so a burst of requests that each need a new
// state does not fail with lua_timeout.
func TestDeadlineStartsWithTheState(t *testing.T) {
	// The top level takes far longer than the hook's 20 ms; the hook itself
	// returns at once.
	e := newEngine(t, `
local x = 0
for i = 1, 1000000 do x = x + i end
function on_request(req) return nil end
`, Options{Timeout: 20 * time.Millisecond, InitTimeout: 30 * time.Second, PoolSize: 1})
	start := time.Now()
	v, err := e.newVM()
	if err != nil {
		t.Fatal(err)
	}
	v.L.Close()
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Skipf("making a state took %s here, too fast to tell the two deadlines apart", d)
	}
	// With no idle state left, the call makes its own.
	e.Close()
	r := &Request{Method: "POST", Path: "/v1/chat/completions", Headers: http.Header{}, Body: []byte(`{"model":"m"}`)}
	if _, err := e.OnRequest(context.Background(), r); err != nil {
		t.Fatalf("OnRequest: %v (making the state was counted against the hook's deadline)", err)
	}
}

func TestOnAuthLimits(t *testing.T) {
	tests := []struct {
		limits  string
		want    map[string]float64
		wantErr string
	}{
		{`{requests_per_second = 0.5}`, map[string]float64{"requests_per_second": 0.5}, ""},
		{`{requests_per_minute = 600, tokens_per_minute = 2e5, max_concurrent = 3, total_quota = 1000000}`,
			map[string]float64{"requests_per_minute": 600, "tokens_per_minute": 200000, "max_concurrent": 3, "total_quota": 1e6}, ""},
		{`{requests_per_minute = 0.5}`, nil, "limits.requests_per_minute is 0.5, want a whole number"},
		{`{max_concurrent = 1/0}`, nil, "limits.max_concurrent is a number, want a number"},
		{`{rpm = 5}`, nil, "limits.rpm is not a limit"},
		{`{max_concurrent = -1}`, nil, "limits.max_concurrent is -1, want 0 or more"},
		{`{requests_per_second = -0.5}`, nil, "limits.requests_per_second is -0.5, want 0 or more"},
		{`{requests_per_second = "1"}`, nil, "limits.requests_per_second is a string, want a number"},
	}
	for _, tc := range tests {
		t.Run(tc.limits, func(t *testing.T) {
			e := newEngine(t, `function on_auth(req) return {id = "k1", limits = `+tc.limits+`} end`, Options{})
			id, err := e.OnAuth(context.Background(), &Request{Headers: http.Header{}})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("OnAuth = %+v, %v; want error %q", id, err, tc.wantErr)
				}
				return
			}
			if err != nil || id == nil || !reflect.DeepEqual(id.Limits, tc.want) {
				t.Fatalf("OnAuth = %+v, %v; want limits %v", id, err, tc.want)
			}
		})
	}
}

// TestOnAuthIdentityFields: an identity's id, name and user_id are strings
// (a number is written as tostring does); another type fails the hook
// rather than turning into the default id "lua", shared by every such
// identity.
func TestOnAuthIdentityFields(t *testing.T) {
	e := newEngine(t, `function on_auth(req) return {id = 7, name = "n", user_id = "u"} end`, Options{})
	id, err := e.OnAuth(context.Background(), &Request{Headers: http.Header{}})
	if err != nil || id == nil || id.ID != "7" || id.Name != "n" || id.UserID != "u" {
		t.Fatalf("OnAuth = %+v, %v", id, err)
	}
	e = newEngine(t, `function on_auth(req) return {id = {tenant = "acme"}} end`, Options{})
	if id, err := e.OnAuth(context.Background(), &Request{Headers: http.Header{}}); !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "id is a table, want a string") {
		t.Fatalf("OnAuth = %+v, %v; want ErrScript naming id", id, err)
	}
}

// TestOnAuthIdIsBounded: an identity's id is at most 64 bytes, with no
// spaces or control characters: one built from a client's header, 5,000
// bytes long, would make an event subject NATS refuses, closing the
// gateway's publishing connection, and stay at the head of the outbox.
func TestOnAuthIdIsBounded(t *testing.T) {
	e := newEngine(t, `function on_auth(req) return {id = "user-" .. (req.headers:get("X-User") or "")} end`, Options{})
	for _, c := range []struct {
		user string
		ok   bool
	}{
		{"alice", true},
		{strings.Repeat("a", 58), true}, // "user-" + 58 = 63
		{strings.Repeat("a", 60), false},
		{strings.Repeat("a", 5000), false},
		{"tenant:acme", true},
		{"a.b@example.com", true},
		{"a b", false},
		{"a\nb", false},
	} {
		id, err := e.OnAuth(context.Background(), &Request{Headers: http.Header{"X-User": {c.user}}})
		if c.ok && (err != nil || id == nil || id.ID != "user-"+c.user) {
			t.Errorf("X-User %.20q: %+v, %v; want the identity", c.user, id, err)
		}
		if !c.ok && (!errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "returned id") || len(err.Error()) > 400) {
			t.Errorf("X-User %.20q: %+v, %v; want ErrScript naming the id, briefly", c.user, id, err)
		}
	}
}

// TestOnAuthReservedIds: an identity may not take the ids the gateway gives
// requests without a key ("anonymous" with auth off, "unauthenticated" for
// refusals): its requests would be counted with theirs, and skipped by every
// webhook that skips those.
func TestOnAuthReservedIds(t *testing.T) {
	e := newEngine(t, `function on_auth(req) return {id = req.headers:get("X-Id")} end`, Options{})
	for _, c := range []struct {
		id string
		ok bool
	}{{"anonymous", false}, {"unauthenticated", false}, {"anonymous-1", true}, {"Anonymous", true}} {
		id, err := e.OnAuth(context.Background(), &Request{Headers: http.Header{"X-Id": {c.id}}})
		if c.ok && (err != nil || id == nil || id.ID != c.id) {
			t.Errorf("id %q: %+v, %v; want the identity", c.id, id, err)
		}
		if !c.ok && (!errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "returned id \""+c.id+"\"")) {
			t.Errorf("id %q: %+v, %v; want ErrScript naming the reserved id", c.id, id, err)
		}
	}
}

// TestRawsetOfADeclaredGlobal: rawset on a script's environment changes a
// global its top-level code declared, as an assignment does.
func TestRawsetOfADeclaredGlobal(t *testing.T) {
	e := newEngine(t, `
count = 0
function on_route(req) rawset(_G, "count", count + 1) return tostring(count) end`, Options{PoolSize: 1})
	for _, want := range []string{"1", "2"} {
		if got, err := e.OnRoute(context.Background(), &Request{}); err != nil || got != want {
			t.Fatalf("OnRoute = %q, %v; want %q", got, err, want)
		}
	}
}

// TestViewsEndWithTheirCall: a req kept in a global is empty once its
// call returns. Without that, a later call on the same pooled state would
// read and write the headers of a request that has moved on, from another
// goroutine than the one serving it: a data race that can kill the
// process (concurrent map read and write).
func TestViewsEndWithTheirCall(t *testing.T) {
	e := newEngine(t, `
kept = false
kept_headers = false
kept_body = false
function on_request(req)
  if kept then
    if req.headers:get("X-Use") == "req" then return {message = tostring(kept.path)} end
    if req.headers:get("X-Use") == "headers" then kept_headers:set("X-W", "w") end
    if req.headers:get("X-Use") == "body" then kept_body:set("model", "zz") end
  end
  kept, kept_headers, kept_body = req, req.headers, req.body
end
function on_response(req, resp) kept = resp end
function on_complete(ev) kept_body = ev.request_body end`, Options{PoolSize: 1})
	first := &Request{Path: "/v1/first", Headers: http.Header{"X-Secret": {"tenant-a"}}, Body: []byte(`{"model":"m"}`)}
	if _, err := e.OnRequest(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	for _, use := range []string{"req", "headers", "body"} {
		_, err := e.OnRequest(context.Background(), &Request{Headers: http.Header{"X-Use": {use}}, Body: []byte(`{}`)})
		if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "used after the hook it was given to returned") {
			t.Fatalf("%s kept from an earlier call: error = %v", use, err)
		}
		// The failed state is dropped; keep one for the next use.
		if _, err := e.OnRequest(context.Background(), first); err != nil {
			t.Fatal(err)
		}
	}
	if first.Headers.Get("X-W") != "" || string(first.Body) != `{"model":"m"}` {
		t.Errorf("a later call wrote the first request: %v %s", first.Headers, first.Body)
	}
	// ev.request_body kept by on_complete.
	if err := e.OnComplete(context.Background(), &events.RequestCompleted{RequestID: "r1", RequestBody: []byte(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	_, err := e.OnRequest(context.Background(), &Request{Headers: http.Header{"X-Use": {"body"}}, Body: []byte(`{}`)})
	if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "used after") {
		t.Fatalf("ev.request_body kept from an earlier call: error = %v", err)
	}
	if err := e.OnResponse(context.Background(), &Request{}, &Response{Status: 200, Body: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	_, err = e.OnRequest(context.Background(), &Request{Headers: http.Header{"X-Use": {"req"}}, Body: []byte(`{}`)})
	if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "used after") {
		t.Fatalf("resp kept from an earlier call: error = %v", err)
	}
}
