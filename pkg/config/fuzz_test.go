package config

import (
	"os"
	"path/filepath"
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
