package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics and that it returns either a
// config or an error, never both or neither.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/upstream/*.yaml")
	files = append(files, "../../examples/quickstart.yaml")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(minimal + "routing: &r\n  retry:\n    <<: *r\n"))
	f.Add([]byte("backends: &a [*a]\n"))
	f.Add([]byte("a: ${X:-${Y:-z}}\nb: $${c}\n"))
	f.Add([]byte("admin: {listen: ${L:?no ${M}}, token: ${T:=x}}\nusage_hook: {url: ${U-http://h}, secret: ${S:+s}}\nx: ${Y:}\n"))
	f.Add([]byte("backends: [{url: ${X:-http://a:1}, headers: {${K:-X}: ${V:-v}}}]\n"))
	f.Add([]byte("backends:\n  - {url: http://a:1, weight: 1e3, headers: {X: y}}\napi_keys: [{key_sha256: ABC}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml")
		if (c == nil) == (err == nil) {
			t.Fatalf("config %v, error %v", c != nil, err)
		}
		if err != nil {
			_ = err.Error()
			return
		}
		_ = c.Endpoints()
		_ = c.DataPath("x")
		if err := c.Validate(); err != nil {
			t.Fatalf("a config Parse accepted fails Validate: %v", err)
		}
	})
}

// FuzzMaskRefs checks that the placeholders put in for references come out
// as written, and that no line moves.
func FuzzMaskRefs(f *testing.F) {
	f.Add("a: ${X}\nb: [${Y:-${Z}}, $${W}]\n# ${C}\n")
	f.Add("__env0_ ${A} __env_0_ ${B")
	f.Add("a: ${X:?m} ${Y:=d} ${Z-} ${W:+v} ${V?} ${U:1} ${T:-\n}")
	f.Fuzz(func(t *testing.T, text string) {
		masked, e := maskRefs(text)
		if strings.Count(masked, "\n") != strings.Count(text, "\n") {
			t.Fatalf("lines moved: %q → %q", text, masked)
		}
		if got := e.unmask(masked); got != text {
			t.Fatalf("unmask(maskRefs(%q)) = %q", text, got)
		}
	})
}
