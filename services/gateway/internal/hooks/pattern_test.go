package hooks

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// patternCases are Lua 5.1's answers (the reference interpreter's) for
// string.find, match, gmatch and gsub; results are joined with "|".
var patternCases = []struct {
	name, expr, want, wantErr string
}{
	{"find plain text", `("hello world"):find("o w")`, "5|7", ""},
	{"find from init", `("hello world"):find("o", 6)`, "8|8", ""},
	{"find repetition", `("hello"):find("l+")`, "3|4", ""},
	{"find captures", `("hello"):find("(l)(l)")`, "3|4|l|l", ""},
	{"find position captures", `("hello"):find("()ll()")`, "3|4|3|5", ""},
	{"find plain flag", `("a.b"):find(".", 1, true)`, "2|2", ""},
	{"find negative init", `("abc"):find("b", -1)`, "nil", ""},
	{"find empty past end", `("abc"):find("", 10)`, "4|3", ""},
	{"find no match", `("abc"):find("%d")`, "nil", ""},
	{"match captures", `string.match("key=val", "(%w+)=(%w+)")`, "key|val", ""},
	{"match trim", `string.match("  trim  ", "^%s*(.-)%s*$")`, "trim", ""},
	{"match anchor", `string.match("abc", "^b")`, "nil", ""},
	{"match escaped parens", `string.match("THE (quick) fox", "%((%a+)%)")`, "quick", ""},
	{"match balance", `string.match("f(a(b)c)d", "%b()")`, "(a(b)c)", ""},
	{"match frontier", `string.match("hello world", "%f[%w]%w+", 2)`, "world", ""},
	{"match back reference", `string.match("abcabc", "(abc)%1")`, "abc", ""},
	{"match dates", `string.match("2024-01-02", "(%d+)-(%d+)-(%d+)")`, "2024|01|02", ""},
	{"back reference to a position", `string.match("a1 b2", "()%1")`, "nil", ""},
	{"match position only", `string.match("x", "()")`, "1", ""},
	{"match lazy fails", `string.match("aaa", "a-b")`, "nil", ""},
	{"match lazy", `string.match("aaab", "a-b")`, "aaab", ""},
	{"match bracket first", `string.match("[]", "[]]")`, "]", ""},
	{"match dash at set end", `string.match("a-b", "[a-]+")`, "a-", ""},
	{"match escaped caret", `string.match("x^y", "[%^]")`, "^", ""},
	{"match negated set", `string.match("abc", "[^a]+")`, "bc", ""},
	{"match dollar inside", `string.match("a$b", "$b")`, "$b", ""},
	{"match optional", `string.match("color colour", "colou?r", 2)`, "colour", ""},
	{"match classes", `string.match("a1 B2_!", "%l%d%s%u%d%p+")`, "a1 B2_!", ""},
	{"gsub literal", `("hello world"):gsub("o", "0")`, "hell0 w0rld|2", ""},
	{"gsub empty pattern", `("hello"):gsub("", "-")`, "-h-e-l-l-o-|6", ""},
	{"gsub whole match", `("abc"):gsub("%w", "%0%0")`, "aabbcc|3", ""},
	{"gsub swap", `("hello world"):gsub("(%w+) (%w+)", "%2 %1")`, "world hello|1", ""},
	{"gsub table", `("abc"):gsub("b", {b = "X"})`, "aXc|1", ""},
	{"gsub table number", `("abc"):gsub(".", {a = 1})`, "1bc|3", ""},
	{"gsub function", `("abc"):gsub("%w", function(c) if c == "b" then return false end return c:upper() end)`, "AbC|3", ""},
	{"gsub limit", `("abc"):gsub("%w", "x", 2)`, "xxc|2", ""},
	{"gsub anchored", `("aaa"):gsub("^a", "b")`, "baa|1", ""},
	{"gsub percent", `("x = 1"):gsub("%s", "%%")`, "x%=%1|2", ""},
	{"gsub number repl", `("ab"):gsub("a", 7)`, "7b|1", ""},
	{"gmatch pairs", `(function() local t = {} for k, v in ("a=1, b=2"):gmatch("(%w+)=(%w+)") do t[#t+1] = k .. v end return table.concat(t, ",") end)()`, "a1,b2", ""},
	{"gmatch empty matches", `(function() local t = {} for w in ("one two"):gmatch("%a*") do t[#t+1] = w end return table.concat(t, ",") end)()`, "one,,two,", ""},
	{"unfinished capture", `string.find("a", "(")`, "", "unfinished capture"},
	{"missing bracket", `string.find("a", "[a")`, "", "malformed pattern (missing ']')"},
	{"trailing percent", `string.find("a", "%")`, "", "malformed pattern (ends with '%')"},
	{"bad capture in repl", `string.gsub("abc", "(a)", "%2")`, "", "invalid capture index"},
	{"bad back reference", `string.match("a", "%1")`, "", "invalid capture index"},
	{"bad replacement", `string.gsub("a", "a", function() return {} end)`, "", "invalid replacement value (a table)"},
}

func TestPatternFunctions(t *testing.T) {
	for _, tc := range patternCases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, `
local function pack(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
  return table.concat(t, "|")
end
function on_route(req) return pack(`+tc.expr+`) end`, Options{Timeout: testTimeout})
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

// TestRunawayPatternStopsAtDeadline: a pattern whose matching time is
// exponential in its input is one library call, which the VM's per
// instruction check cannot stop; the matcher's own check does, and the
// hook fails with ErrTimeout about when its deadline passes.
func TestRunawayPatternStopsAtDeadline(t *testing.T) {
	const timeout = 50 * time.Millisecond
	// Unbounded, each call runs for minutes; the bound leaves a loaded
	// machine under -race its margin (how close to the deadline a call
	// stops is make bench's business).
	const bound = 5 * time.Second
	for _, call := range []string{
		`s:find("(.-)(.-)(.-)b")`,
		`s:match("(.-)(.-)(.-)b")`,
		`s:gsub("(.-)(.-)(.-)b", "")`,
		`s:gmatch("(.-)(.-)(.-)b")()`,
		`s:find("(.*)(.*)(.*)b")`,
	} {
		t.Run(call, func(t *testing.T) {
			e := newEngine(t, `
local s = string.rep("a", 65536)
function on_route(req) `+call+` return "done" end`, Options{Timeout: timeout})
			start := time.Now()
			b, err := e.OnRoute(context.Background(), &Request{})
			took := time.Since(start)
			if !errors.Is(err, ErrTimeout) {
				t.Fatalf("OnRoute = %q, %v; want ErrTimeout", b, err)
			}
			if took > bound {
				t.Fatalf("returned after %v, want at most %v", took, bound)
			}
			// The engine goes on serving with a fresh state.
			e2 := newEngine(t, `function on_route(req) return ("ab"):match("a(b)") end`, Options{Timeout: testTimeout})
			if b, err := e2.OnRoute(context.Background(), &Request{}); err != nil || b != "b" {
				t.Fatalf("next call = %q, %v", b, err)
			}
		})
	}
}

// TestPatternTooComplex: the matcher's recursion grows with the pattern,
// and is bounded as Lua 5.2 bounds it.
func TestPatternTooComplex(t *testing.T) {
	e := newEngine(t, `
function on_route(req)
  local s = string.rep("a", 1000)
  return tostring(s:find(string.rep("a?", 1000)))
end`, Options{Timeout: testTimeout})
	if _, err := e.OnRoute(context.Background(), &Request{}); err == nil || !strings.Contains(err.Error(), "pattern too complex") {
		t.Fatalf("error = %v, want pattern too complex", err)
	}
}
