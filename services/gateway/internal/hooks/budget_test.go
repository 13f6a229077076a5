package hooks

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// TestStringBudget: each way of building a large string from a small
// script fails its call, naming the limit, before the string is built.
func TestStringBudget(t *testing.T) {
	const limit = 8 << 20
	const want = "would pass the limit of 8388608 bytes"
	for _, tc := range []struct{ name, code string }{
		{"rep kept in a table", `local t = {} for i = 1, 1000 do t[i] = string.rep("a", 1048576) end`},
		{"one concat of many", `local b = ` + strings.Repeat("s .. ", 149) + `s`},
		{"doubling concat", `local b = s for i = 1, 4 do b = b .. b end`},
		{"table.concat", `local t = {} for i = 1, 64 do t[i] = s end table.concat(t)`},
		{"table.concat separator", `local t = {} for i = 1, 100 do t[i] = "x" end table.concat(t, s)`},
		{"gsub expansion", `string.rep("a", 65536):gsub(".", string.rep("%0", 200))`},
		{"format", `local t = {} for i = 1, 16 do t[i] = s end string.format(string.rep("%s", 16), unpack(t))`},
		{"json_encode", `local t = {} for i = 1, 64 do t[i] = s end llmproxy.json_encode(t)`},
		{"body replace", `local t = {} for i = 1, 64 do t[i] = s end req.body:replace({messages = t})`},
		{"base64 chain", `local b = s for i = 1, 40 do b = llmproxy.base64_encode(b) end`},
		{"upper kept in a table", `local t = {} for i = 1, 16 do t[i] = s:upper() end`},
		{"lower, reverse", `local t = {} for i = 1, 8 do t[i] = s:lower() t[i + 8] = s:reverse() end`},
		{"base64_decode", `local b = llmproxy.base64_encode(s) local t = {} for i = 1, 8 do t[i] = llmproxy.base64_decode(b) end`},
		{"json_decode", `local j = '"' .. s .. '"' local t = {} for i = 1, 8 do t[i] = llmproxy.json_decode(j) end`},
		{"string.char", `local b = {} for i = 1, 4000 do b[i] = 120 end local t = {} for i = 1, 3000 do t[i] = string.char(unpack(b)) end`},
		{"body:raw", `req.body:set_raw('"' .. s .. '"') local t = {} for i = 1, 16 do t[i] = req.body:raw() end`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, `
local s = string.rep("a", 1048576)
function on_request(req) `+tc.code+` end`, Options{Timeout: testTimeout, MaxStringBytes: limit})
			_, err := e.OnRequest(context.Background(), &Request{Headers: http.Header{}, Body: []byte(`{}`)})
			if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), want) {
				t.Fatalf("error = %v, want ErrScript with %q", err, want)
			}
		})
	}
}

// TestStringBudgetIsPerCall: what one call built does not count against
// the next.
func TestStringBudgetIsPerCall(t *testing.T) {
	e := newEngine(t, `
local s = string.rep("a", 1048576)
function on_route(req) local b = s for i = 1, 2 do b = b .. b end return tostring(#b) end`,
		Options{Timeout: testTimeout, MaxStringBytes: 8 << 20, PoolSize: 1})
	for i := range 3 {
		if got, err := e.OnRoute(context.Background(), &Request{}); err != nil || got != "4194304" {
			t.Fatalf("call %d: %q, %v", i, got, err)
		}
	}
}

// TestConcatOperator: the checked `..` keeps Lua's semantics.
func TestConcatOperator(t *testing.T) {
	for _, tc := range []struct{ name, expr, want, wantErr string }{
		{"strings", `"a" .. "b" .. "c"`, "abc", ""},
		{"numbers", `1 .. 2 .. 0.5`, "120.5", ""},
		{"nested", `("a" .. ("b" .. "c")) .. "d"`, "abcd", ""},
		{"in a call", `string.upper("a" .. "b")`, "AB", ""},
		{"metamethod", `setmetatable({}, {__concat = function(a, b) return "T" .. tostring(b) end}) .. "x"`, "Tx", ""},
		{"metamethod on the right", `"x" .. "y" .. setmetatable({}, {__concat = function(a, b) return a .. "!" end})`, "xy!", ""},
		{"table", `"x" .. {}`, "", "cannot perform concat operation between string and table"},
		{"nil", `"x" .. nil`, "", "cannot perform concat operation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, `function on_route(req) return `+tc.expr+` end`, Options{Timeout: testTimeout})
			got, err := e.OnRoute(context.Background(), &Request{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("OnRoute = %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("OnRoute = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestFormatWidth: string.format takes widths and precisions of two
// digits at most, as Lua does, so that a short format cannot ask for
// megabytes of padding.
func TestFormatWidth(t *testing.T) {
	e := newEngine(t, `function on_route(req) return string.format("%5.2f|%-3d|%s", 1.5, 7, "x") end`, Options{Timeout: testTimeout})
	if got, err := e.OnRoute(context.Background(), &Request{}); err != nil || got != " 1.50|7  |x" {
		t.Fatalf("OnRoute = %q, %v", got, err)
	}
	e = newEngine(t, `function on_route(req) return string.format("%999999d", 1) end`, Options{Timeout: testTimeout})
	if _, err := e.OnRoute(context.Background(), &Request{}); err == nil || !strings.Contains(err.Error(), "width or precision too long") {
		t.Fatalf("error = %v", err)
	}
}
