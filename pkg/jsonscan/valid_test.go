package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestValidMatchesEncodingJSON(t *testing.T) {
	cases := []string{
		``, ` `, `{}`, `[]`, `{ }`, `[ ]`, `{"a":1}`, `{"a":1,}`, `[1,]`, `[,1]`, `{"a"}`, `{"a":}`, `{a:1}`,
		`{"a":1}x`, `{"a":1} `, ` {"a":[1,2,{"b":null}]} `, `"x"`, `"\u00e9\n\"\\\/\b\f\r\t"`, `"\x"`, `"\u12"`,
		`"\u12G4"`, "\"a\x01\"", `"unterminated`, `true`, `tru`, `false`, `null`, `nul`, `nullx`,
		`0`, `-0`, `01`, `-`, `1.`, `1.5`, `1e`, `1e+`, `1e+5`, `1E-5`, `-1.5e10`, `.5`, `+1`, `1.5.5`,
		`[1 2]`, `{"a":1 "b":2}`, `{"a":1,"b":[true,false,null],"c":{"d":"e"}}`, `[[[[]]]]`, `[[[[]]]`, `[}`, `{]`,
		`{"a":1}}`, `[1]]`, `{"a" : 1 , "b" : [ 1 , 2 ] }`, "\t{\r\n}\n", `"é"`, "\"\xff\"",
		strings.Repeat("[", 100) + strings.Repeat("]", 100),
		strings.Repeat("[", 100) + strings.Repeat("]", 99),
		strings.Repeat(`{"a":`, 70) + "1" + strings.Repeat("}", 70),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	}
	for _, c := range cases {
		if got, want := Valid([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("Valid(%.40q) = %v, json.Valid says %v", c, got, want)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, s := range []string{`{"a":[1,2.5e3,"x\u00e9"],"b":{"c":null,"d":true}}`, `[1,]`, `"\u12"`, `-0.0e-0`} {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"schema":"llmproxy.request.completed/v1","request_id":"r","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"request_body":{"messages":[{"role":"user","content":"hi \u00e9"}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Valid(b), json.Valid(b); got != want {
			t.Fatalf("Valid(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}

func BenchmarkValid(b *testing.B) {
	ev := []byte(`{"id":"chatcmpl-9f3c1a7e2b5d4c8e","object":"chat.completion.chunk","created":1732550000,"model":"Qwen/Qwen2.5-7B-Instruct","choices":[{"index":0,"delta":{"content":" tok1"},"logprobs":null,"finish_reason":null}]}`)
	b.Run("Valid", func(b *testing.B) {
		for b.Loop() {
			Valid(ev)
		}
	})
	b.Run("json.Valid", func(b *testing.B) {
		for b.Loop() {
			json.Valid(ev)
		}
	})
}
