package hooks

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzPatterns runs string.find, match, gsub and gmatch on arbitrary
// subjects, patterns and replacements: the matcher (a port of Lua 5.1's C)
// may refuse a pattern with a Lua error or be stopped at the deadline, but
// must never fail inside Go (an index out of range, say), which pcall would
// otherwise turn into an ordinary error.
func FuzzPatterns(f *testing.F) {
	for _, s := range [][3]string{
		{"hello world", "o w", "x"},
		{"key=val", "(%w+)=(%w+)", "%2=%1"},
		{"  trim  ", "^%s*(.-)%s*$", "%1"},
		{"f(a(b)c)d", "%b()", ""},
		{"hello world", "%f[%w]%w+", "<%0>"},
		{"abcabc", "(abc)%1", "%1"},
		{"a1 b2", "()%1", ""},
		{"[]", "[]]", "%%"},
		{"a-b", "[a-]+", ""},
		{"x^y", "[%^]", ""},
		{"aaab", "a-b", ""},
		{"abc", "(", ""},
		{"abc", "[a", ""},
		{"abc", "%", ""},
		{"abc", "(a)", "%2"},
		{"", "", ""},
		{"\x00\xff", "[\x00-\xff]", "%0"},
		{"abc", "%f[]", ""},
		{"abc", "[%", ""},
		{"abc", "%b", ""},
		{"abc", "(()", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	e, err := New([]Script{{Name: "fuzz.lua", Source: `
function on_route(req)
  local s, p, r = req.method, req.path, req.client_ip
  local out = {}
  local function try(f, ...)
    local ok, err = pcall(f, ...)
    if not ok then out[#out+1] = tostring(err) end
  end
  try(string.find, s, p)
  try(string.find, s, p, 2)
  try(string.find, s, p, -1)
  try(string.match, s, p)
  try(string.gsub, s, p, r)
  try(string.gsub, s, p, r, 1)
  try(function()
    local n = 0
    for a in string.gmatch(s, p) do
      n = n + 1
      if n > 1000 then break end
    end
  end)
  return table.concat(out, "\n")
end`}}, Options{Timeout: 500 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, src, pat, repl string) {
		if len(src) > 4096 || len(pat) > 256 || len(repl) > 256 {
			t.Skip()
		}
		start := time.Now()
		errs, err := e.OnRoute(context.Background(), &Request{Method: src, Path: pat, ClientIP: repl})
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("find/match/gsub/gmatch(%q, %q, %q) ran %s past a 500ms deadline", src, pat, repl, d)
		}
		if err != nil && !errors.Is(err, ErrTimeout) {
			t.Fatalf("find/match/gsub/gmatch(%q, %q, %q): %v", src, pat, repl, err)
		}
		if strings.Contains(errs, "runtime error") || strings.Contains(errs, "goroutine") {
			t.Fatalf("find/match/gsub/gmatch(%q, %q, %q) failed in Go:\n%s", src, pat, repl, errs)
		}
	})
}
