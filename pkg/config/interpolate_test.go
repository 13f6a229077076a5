package config

import (
	"strings"
	"testing"
)

func TestInterpolate(t *testing.T) {
	env := map[string]string{"HOST": "vllm", "EMPTY": "", "PORT": "8000"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct{ name, in, want string }{
		{"plain", "url: http://${HOST}:${PORT}", "url: http://vllm:8000"},
		{"unset is empty", "token: ${NOPE}", "token: "},
		{"default when unset", "token: ${NOPE:-change-me}", "token: change-me"},
		{"default when empty", "token: ${EMPTY:-x}", "token: x"},
		{"set beats default", "host: ${HOST:-other}", "host: vllm"},
		{"empty default", "a: ${NOPE:-}", "a: "},
		{"nested default", "a: ${NOPE:-${HOST}:${PORT}}", "a: vllm:8000"},
		{"escape", "a: $${HOST} and $$HOST", "a: ${HOST} and $$HOST"},
		{"escape in default", "a: ${NOPE:-$${HOST}}", "a: ${HOST}"},
		{"not a reference", "a: ${not valid} ${1X} ${HOST", "a: ${not valid} ${1X} ${HOST"},
		{"no brace before newline", "a: ${NOPE:-x\nb: 1}", "a: ${NOPE:-x\nb: 1}"},
		{"dollar alone", "price: $5", "price: $5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := interpolate(tt.in, lookup); got != tt.want {
				t.Errorf("interpolate(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseInterpolatesEnv(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_BACKEND", "http://vllm-7:8000")
	t.Setenv("LLMPROXY_TEST_RPS", "25")
	y := `# ${LLMPROXY_TEST_BACKEND} in a comment is harmless
backends:
  - url: "${LLMPROXY_TEST_BACKEND}"
    headers:
      Authorization: "Bearer ${LLMPROXY_TEST_UNSET_KEY:-dev-key}"
admin:
  listen: "${LLMPROXY_TEST_UNSET_ADMIN:-127.0.0.1:8001}"
  token: "$${literal}"
rate_limit:
  global:
    requests_per_second: ${LLMPROXY_TEST_RPS}
  bogus: 1
`
	_, err := Parse([]byte(y), "c.yaml")
	// The line numbers stay those of the file as written.
	if err == nil || !strings.Contains(err.Error(), "c.yaml:12: key rate_limit.bogus: unknown key") {
		t.Fatalf("got %v", err)
	}
	c, err := Parse([]byte(strings.Replace(y, "  bogus: 1\n", "", 1)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backends[0]
	if b.URL != "http://vllm-7:8000" || b.Headers["Authorization"] != "Bearer dev-key" {
		t.Errorf("backend %+v", b)
	}
	if c.Admin.Listen != "127.0.0.1:8001" || c.Admin.Token != "${literal}" {
		t.Errorf("admin %+v", c.Admin)
	}
	if g := c.RateLimit.Global; g.RequestsPerSecond != 25 || g.BurstSize != 25 {
		t.Errorf("global %+v", g)
	}
}
