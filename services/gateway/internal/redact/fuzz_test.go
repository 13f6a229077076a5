package redact

import (
	"encoding/json"
	"testing"
)

// FuzzJSON checks that JSON never panics and that valid JSON stays valid.
func FuzzJSON(f *testing.F) {
	for _, s := range []string{
		`{"messages":[{"role":"user","content":"sk-abc"}]}`,
		`[1,"two",{"a":null,"b":[true,false]}]`,
		`"str\u0041\"\\"`,
		` { "a" : { "b" : 1e5 } } `,
		`{"a":`,
		`plain text sk-123`,
		``,
	} {
		f.Add([]byte(s), "$.messages[*].content")
		f.Add([]byte(s), "$..b")
		f.Add([]byte(s), `sk-[a-z0-9]+`)
	}
	f.Fuzz(func(t *testing.T, body []byte, rule string) {
		r, err := Compile([]string{rule, `[aeiou]`, "$.a[0]"})
		if err != nil {
			return
		}
		out := r.JSON(body)
		if json.Valid(body) && !json.Valid(out) {
			t.Fatalf("valid JSON in, invalid out:\n in %q\nout %q", body, out)
		}
		_ = r.Text(string(body))
	})
}

// FuzzCompile checks that no rule makes Compile panic.
func FuzzCompile(f *testing.F) {
	for _, s := range []string{"$", "$.a", "$..a[*]", "$['x']", "$.a[3].b", "re(gex)?"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rule string) {
		r, err := Compile([]string{rule})
		if err == nil {
			_ = r.JSON([]byte(`{"a":[{"b":"c"}],"x":"y"}`))
		}
	})
}
