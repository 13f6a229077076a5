package hooks

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// BenchmarkOnRequestModelAlias measures the hot-path cost of a hook that
// rewrites the model: borrow a state, decode the body, set two fields,
// encode the body.
func BenchmarkOnRequestModelAlias(b *testing.B) {
	e := loadBench(b, "model_alias.lua")
	body := []byte(`{"model":"gpt-4o","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Write a haiku about proxies."}],"temperature":0.7,"stream":true}`)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r := &Request{Method: "POST", Path: "/v1/chat/completions", Headers: http.Header{}, Body: body}
		if _, err := e.OnRequest(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOnRequestReadOnly is the floor: a hook that reads one header and
// leaves the body alone.
func BenchmarkOnRequestReadOnly(b *testing.B) {
	e, err := New([]Script{{Name: "ro.lua", Source: `
function on_request(req)
  if req.headers:get("X-Block") then return {status = 403} end
end`}}, Options{Logger: quietLogger(), Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	r := &Request{Headers: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"model":"m"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.OnRequest(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHasMiss is the cost the proxy pays for a hook no script defines.
func BenchmarkHasMiss(b *testing.B) {
	e := loadBench(b, "model_alias.lua")
	for b.Loop() {
		if e.Has(HookResponse) {
			b.Fatal("unexpected hook")
		}
	}
}

func loadBench(b *testing.B, name string) *Engine {
	b.Helper()
	// A generous timeout: this measures cost, and a busy machine can stall
	// one iteration past the default.
	e, err := Load([]string{examplesDir + "/" + name}, Options{Logger: quietLogger(), Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// BenchmarkOnRequestPatterns measures the pattern functions on small
// inputs, as a hook that parses a header and scrubs a string uses them.
func BenchmarkOnRequestPatterns(b *testing.B) {
	e, err := New([]Script{{Name: "patterns.lua", Source: `
function on_request(req)
  local product, version = req.headers:get("User-Agent"):match("^([%w%-]+)/(%d+%.%d+)")
  local s = ("contact bob@example.com or ann@example.org, key sk-abc123"):gsub("[%w.]+@[%w.]+", "[email]")
  for w in s:gmatch("%a+") do end
  if not s:find("sk-", 1, true) or not product then error("no match") end
end`}}, Options{Logger: quietLogger(), Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	r := &Request{Headers: http.Header{"User-Agent": {"openai-python/1.52 (linux)"}}, Body: []byte(`{"model":"m"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.OnRequest(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}
