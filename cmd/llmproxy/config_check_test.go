package main

import (
	"io"
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
		{"redact JSON path that does not compile", "backends: [{url: http://127.0.0.1:9000}]\nlogging:\n  redact:\n    - '$.messages[*].content'\n    - '$.messages['\n    - 'sk-[a-z]+'\n", []string{":5: key logging.redact[1]: not a valid JSON path: unterminated ["}},
		{"redact regex that matches nothing at all", "backends: [{url: http://127.0.0.1:9000}]\nlogging:\n  redact: ['.*']\n", []string{":3: key logging.redact[0]: the regular expression matches the empty string"}},
		{"redact regex that does not compile", "backends: [{url: http://127.0.0.1:9000}]\nlogging:\n  redact: ['sk-(']\n", []string{":3: key logging.redact[0]: not a JSON path ($…) nor a valid regular expression"}},
		{"redis url the client refuses", "backends: [{url: http://127.0.0.1:9000}]\nredis:\n  url: redis://:hunter2@127.0.0.1:6379/abc?dial_timeout=soon\n", []string{":3: key redis.url: invalid database number"}},
		{"postgres url the client refuses", "backends: [{url: http://127.0.0.1:9000}]\nlogging:\n  postgres: {url: \"postgres://u:hunter2@db/x?sslmode=bogus\"}\n", []string{":3: key logging.postgres.url: not a valid PostgreSQL URL"}},
		{"fallback naming no backend", "backends: [{url: http://127.0.0.1:9000}]\nrouting:\n  fallback:\n    - {primary: http://127.0.0.1:9000, fallback: [http://nowhere:1]}\n", []string{":4:", "fallback"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkConfig(write(strings.ReplaceAll(c.name, " ", "_")+".yaml", c.yaml), "")
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
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error %q shows the password", err)
			}
		})
	}
}

// TestServeLoadsAsConfigCheck: serve (and its reload) refuse a redaction
// rule that config check refuses, with the same file:line.
func TestServeLoadsAsConfigCheck(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	y := "listen: 127.0.0.1:0\ndata_dir: " + filepath.Join(dir, "data") + "\nbackends: [{url: http://127.0.0.1:9000}]\nlogging: {redact: ['$..']}\n"
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	want := path + `:4: key logging.redact[0]: not a valid JSON path: empty member name at offset 3`
	if _, err := loadConfig(path); err == nil || err.Error() != want {
		t.Fatalf("loadConfig = %v, want %s", err, want)
	}
	var code int
	stderr := captureStderr(t, func() { code = cmdServe([]string{"--config", path}) })
	if code != 1 || strings.TrimSpace(stderr) != want {
		t.Fatalf("serve = %d, printed %q; want 1 and %q", code, stderr, want)
	}
}

// captureStderr returns what fn writes to os.Stderr.
func captureStderr(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	defer func() { os.Stderr = old }()
	fn()
	w.Close()
	return <-done
}
