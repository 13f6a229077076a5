package redact

import (
	"encoding/json"
	"strings"
	"testing"
)

func mustCompile(t testing.TB, rules ...string) *Redactor {
	t.Helper()
	r, err := Compile(rules)
	if err != nil {
		t.Fatalf("Compile(%q): %v", rules, err)
	}
	return r
}

func TestJSON(t *testing.T) {
	chat := `{"model":"m","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"my key is sk-abc123"}],"max_tokens":5}`
	tests := []struct {
		name  string
		rules []string
		in    string
		want  string
	}{
		{"no rules", nil, chat, chat},
		{"messages content", []string{"$.messages[*].content"}, chat,
			`{"model":"m","messages":[{"role":"system","content":"[REDACTED]"},{"role":"user","content":"[REDACTED]"}],"max_tokens":5}`},
		{"one index", []string{"$.messages[1].content"}, chat,
			`{"model":"m","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"[REDACTED]"}],"max_tokens":5}`},
		{"whole array", []string{"$.messages"}, chat, `{"model":"m","messages":"[REDACTED]","max_tokens":5}`},
		{"number", []string{"$.max_tokens"}, chat,
			`{"model":"m","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"my key is sk-abc123"}],"max_tokens":"[REDACTED]"}`},
		{"nested member", []string{"$.a.b"}, `{"a":{"b":{"c":[1,2]},"x":1},"b":2}`, `{"a":{"b":"[REDACTED]","x":1},"b":2}`},
		{"bracket name", []string{"$['a b']"}, `{"a b":1,"c":2}`, `{"a b":"[REDACTED]","c":2}`},
		{"wildcard member", []string{"$.*"}, `{"a":1,"b":[2]}`, `{"a":"[REDACTED]","b":"[REDACTED]"}`},
		{"descendant", []string{"$..content"}, `{"content":"a","x":[{"content":{"y":1}}],"z":{"w":{"content":null}}}`,
			`{"content":"[REDACTED]","x":[{"content":"[REDACTED]"}],"z":{"w":{"content":"[REDACTED]"}}}`},
		{"path does not match", []string{"$.nothing.here", "$.messages[9]"}, chat, chat},
		{"regexp in every string", []string{`sk-[a-z0-9]+`}, chat,
			`{"model":"m","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"my key is [REDACTED]"}],"max_tokens":5}`},
		{"regexp leaves keys and numbers", []string{`max|5`}, `{"max":5,"s":"max 5"}`, `{"max":5,"s":"[REDACTED] [REDACTED]"}`},
		{"regexp across an escape", []string{`secret`}, `{"s":"sec\u0072et \"q\"\n"}`, `{"s":"[REDACTED] \"q\"\n"}`},
		{"escaped key matches path", []string{"$.content"}, `{"cont\u0065nt":"x"}`, `{"cont\u0065nt":"[REDACTED]"}`},
		{"replacement is literal", []string{`a(b)`}, `{"s":"ab"}`, `{"s":"[REDACTED]"}`},
		{"spacing kept", []string{"$.a"}, "{ \"a\" : [ 1 , 2 ] ,\n \"b\" : \"x\" }", "{ \"a\" : \"[REDACTED]\" ,\n \"b\" : \"x\" }"},
		{"root", []string{"$"}, `{"a":1}`, `"[REDACTED]"`},
		{"scalar document", []string{`x`}, `"xyz"`, `"[REDACTED]yz"`},
		{"invalid json gets regexps", []string{`sk-[a-z0-9]+`, "$.a"}, `{"a":"sk-abc`, `{"a":"[REDACTED]`},
		{"text body", []string{`\d{4}-\d{4}`}, `card 1234-5678 ok`, `card [REDACTED] ok`},
		{"empty", []string{`x`}, ``, ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustCompile(t, tt.rules...)
			got := string(r.JSON([]byte(tt.in)))
			if got != tt.want {
				t.Fatalf("JSON(%s)\n got %s\nwant %s", tt.in, got, tt.want)
			}
			if json.Valid([]byte(tt.in)) && !json.Valid([]byte(got)) {
				t.Fatalf("output is not valid JSON: %s", got)
			}
		})
	}
}

func TestJSONUnchangedReturnsInputWithoutAllocating(t *testing.T) {
	r := mustCompile(t, "$.messages[*].content", `sk-[a-z0-9]{20}`)
	in := []byte(`{"model":"m","messages":[{"role":"user","text":"hello"}],"stream":true,"n":[1,2,{"x":null}]}`)
	out := r.JSON(in)
	if &out[0] != &in[0] {
		t.Fatal("JSON copied a body it did not change")
	}
	in2 := []byte(`{"model":"m","messages":[],"n":[1,2,{"x":null}]}`)
	if raceEnabled {
		return
	}
	allocs := testing.AllocsPerRun(100, func() { _ = r.JSON(in2) })
	if allocs != 0 {
		t.Fatalf("JSON allocated %v times on a body no rule touches", allocs)
	}
	var nilR *Redactor
	if got := nilR.JSON(in); &got[0] != &in[0] {
		t.Fatal("nil Redactor changed the body")
	}
}

func TestText(t *testing.T) {
	r := mustCompile(t, `(?i)bearer [a-z0-9._-]+`, "$.ignored", `\b\d{3}-\d{2}-\d{4}\b`)
	for in, want := range map[string]string{
		"":                                "",
		"nothing here":                    "nothing here",
		"Authorization: Bearer abc.def-1": "Authorization: [REDACTED]",
		"ssn 123-45-6789 and 987-65-4321": "ssn [REDACTED] and [REDACTED]",
	} {
		if got := r.Text(in); got != want {
			t.Errorf("Text(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, rule := range []string{"$.", "$.a[", "$.a[x]", "$.a[-1]", "$a", "$['a", "(unclosed", "$.a.[0]", "q*", "(a|)", "^"} {
		if _, err := Compile([]string{"ok", rule}); err == nil {
			t.Errorf("Compile(%q): want an error", rule)
		} else if !strings.Contains(err.Error(), "redact[1]") {
			t.Errorf("Compile(%q): error %q does not name the rule", rule, err)
		}
	}
	r, err := Compile([]string{"", "  "})
	if err != nil || !r.Empty() {
		t.Fatalf("blank rules: %v, empty=%v", err, r.Empty())
	}
}

func TestAppendStringRoundTrips(t *testing.T) {
	for _, s := range []string{"", "plain", "q\"b\\", "\x00\x1f\n\r\t", "é😀<>&", "bad\xffutf8", "\u2028"} {
		enc := appendString(nil, s)
		var back string
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("appendString(%q) = %s: %v", s, enc, err)
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		if back != want {
			t.Errorf("round trip %q: got %q", s, back)
		}
	}
}

func BenchmarkJSONNoMatch(b *testing.B) {
	r := mustCompile(b, "$.messages[*].content", `sk-[a-zA-Z0-9]{20,}`)
	body := []byte(`{"model":"qwen","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about the sea."}],"stream":true,"max_tokens":256}`)
	r2 := mustCompile(b, `sk-[a-zA-Z0-9]{20,}`)
	b.Run("path", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = r.JSON(body)
		}
	})
	b.Run("regexp", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = r2.JSON(body)
		}
	})
}

// TestCutJSON: the start of a JSON document cut short is redacted as it
// reads, escapes of printable characters undone first; escapes of quotes,
// backslashes and control characters are kept, and an escaped backslash
// is no escape.
func TestCutJSON(t *testing.T) {
	r, err := Compile([]string{`sk-[a-z0-9]{8,}`})
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		`{"c":"caf\u00e9 sk\u002dabcdefgh1 \/x`:     `{"c":"café [REDACTED] /x`,
		`{"c":"\u0073\u006b-abcdefgh1\ud83d\ude00 `: `{"c":"[REDACTED]😀 `,
		`{"c":"a\"b\\c\n\u0000\u001f\u005c\u0022 `:  `{"c":"a\"b\\c\n\u0000\u001f\u005c\u0022 `,
		`{"c":"\\u0073k-abcdefgh1`:                  `{"c":"\\u0073k-abcdefgh1`,
		`{"c":"lone \ud800 and cut \u00`:            `{"c":"lone \ud800 and cut \u00`,
	} {
		if got := r.CutJSON(in); got != want {
			t.Errorf("CutJSON(%s) = %s, want %s", in, got, want)
		}
	}
	if got := (&Redactor{}).CutJSON(`\u0073k-abcdefgh1`); got != `\u0073k-abcdefgh1` {
		t.Errorf("without rules: %s", got)
	}
}
