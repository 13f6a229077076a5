package main

import (
	"encoding/json"
	"testing"
)

func TestCountWords(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"", 0}, {"   ", 0}, {"one", 1}, {" one  two\tthree\nfour ", 4},
		{"héllo wörld", 2}, {"a\u00a0b", 2}, {"日本語", 1},
	}
	for _, tc := range tests {
		if got := countWords(tc.in); got != tc.want {
			t.Errorf("countWords(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestTextInputs(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{`"a b c"`, 3}, {`["a b","c"]`, 3}, {`[1,2,3]`, 3}, {`[[1,2],[3]]`, 3}, {`null`, 0},
	}
	for _, tc := range tests {
		var ti textInputs
		if err := json.Unmarshal([]byte(tc.in), &ti); err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got := ti.count(); got != tc.want {
			t.Errorf("%s: count %d, want %d", tc.in, got, tc.want)
		}
	}
	var ti textInputs
	if err := json.Unmarshal([]byte(`{"x":1}`), &ti); err == nil {
		t.Errorf("object input accepted")
	}
}

func TestCountContent(t *testing.T) {
	for in, want := range map[string]int{
		`"a b"`: 2, `[{"type":"text","text":"a b"},{"type":"image_url"}]`: 2, `null`: 0, ``: 0,
	} {
		if got := countContent(json.RawMessage(in)); got != want {
			t.Errorf("countContent(%s) = %d, want %d", in, got, want)
		}
	}
}

func FuzzTextInputs(f *testing.F) {
	for _, s := range []string{`"a b"`, `["a","b c"]`, `[1,2]`, `[[1],[2,3]]`, `null`, `[`, `[1,"a",[2]]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var ti textInputs
		if json.Unmarshal([]byte(s), &ti) == nil && ti.count() < 0 {
			t.Fatalf("negative count for %q", s)
		}
		_ = countContent(json.RawMessage(s))
		_ = countWords(s)
	})
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"plain", `q"uote`, "back\\slash", "ctl\x01", "ünï", "bad\xff"} {
		var got string
		if err := json.Unmarshal(appendJSONString(nil, s), &got); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if want, _ := json.Marshal(s); string(appendJSONString(nil, s)) != string(want) && got != s {
			t.Fatalf("%q round-trips to %q", s, got)
		}
	}
}
