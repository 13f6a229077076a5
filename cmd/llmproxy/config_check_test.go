package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("bad.lua", "function on_request(req)\n  return nil\n\nend end\n")
	write("good.lua", "function on_request(req) return nil end\n")
	cases := []struct {
		name, yaml string
		want       []string // substrings of the error; none = valid
	}{
		{"valid", "backends: [{url: http://127.0.0.1:9000}]\nlua: {scripts: [good.lua]}\n", nil},
		{"lua syntax error names file and line", "backends: [{url: http://127.0.0.1:9000}]\nlua: {scripts: [bad.lua]}\n", []string{"lua.scripts", "bad.lua:4"}},
		{"unknown key with line", "backends: [{url: http://127.0.0.1:9000}]\nroutng: {}\n", []string{":2:", "routng"}},
		{"unknown strategy", "backends: [{url: http://127.0.0.1:9000}]\nrouting: {load_balance_strategy: fastest}\n", []string{":2:", "load_balance_strategy"}},
		{"fallback naming no backend", "backends: [{url: http://127.0.0.1:9000}]\nrouting:\n  fallback:\n    - {primary: http://127.0.0.1:9000, fallback: [http://nowhere:1]}\n", []string{":4:", "fallback"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkConfig(write(strings.ReplaceAll(c.name, " ", "_")+".yaml", c.yaml))
			if c.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
