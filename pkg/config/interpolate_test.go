package config

import (
	"slices"
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"HOST": "vllm", "EMPTY": "", "PORT": "8000"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct {
		name, in, want string
		unset, fails   []string
	}{
		{"plain", "http://${HOST}:${PORT}", "http://vllm:8000", nil, nil},
		{"unset is reported", "Bearer ${NOPE}", "Bearer ", []string{"NOPE"}, nil},
		{"each unset once", "${NOPE}${B}${NOPE}", "", []string{"NOPE", "B"}, nil},
		{"set but empty", "x${EMPTY}y", "xy", nil, nil},
		{"default when unset", "${NOPE:-change-me}", "change-me", nil, nil},
		{"default when empty", "${EMPTY:-x}", "x", nil, nil},
		{"set beats default", "${HOST:-other}", "vllm", nil, nil},
		{"empty default", "${NOPE:-}", "", nil, nil},
		{"nested default", "${NOPE:-${HOST}:${PORT}}", "vllm:8000", nil, nil},
		{"unset in a default", "${NOPE:-${ALSO_NOPE}}", "", []string{"ALSO_NOPE"}, nil},
		{"default not needed", "${HOST:-${ALSO_NOPE}}", "vllm", nil, nil},
		{"default only when unset", "${NOPE-x} ${EMPTY-x} ${HOST-x}", "x  vllm", nil, nil},
		{"alternative when set and not empty", "${HOST:+on} ${EMPTY:+on} ${NOPE:+on}", "on  ", nil, nil},
		{"alternative when set", "${HOST+on} ${EMPTY+on} ${NOPE+on}", "on on ", nil, nil},
		{"required and set", "${HOST:?must be set}", "vllm", nil, nil},
		{"required and unset", "a${NOPE:?NOPE must be set to the ${HOST} token}", "a", nil,
			[]string{"environment variable NOPE is not set: NOPE must be set to the vllm token"}},
		{"required and empty", "${EMPTY:?}", "", nil, []string{"environment variable EMPTY is empty"}},
		{"required only when unset", "${EMPTY?} ${NOPE?gone}", " ", nil, []string{"environment variable NOPE is not set: gone"}},
		{"assignment is not read", "${NOPE:=x}", "", nil,
			[]string{"${NOPE:=…} is not a form LLMProxy reads: write ${NOPE}, ${NOPE:-default}, ${NOPE-default}, ${NOPE:?message} or ${NOPE:+value} ($${ writes a literal ${)"}},
		{"nor a bare =", "${HOST=x}", "", nil, []string{"${HOST=…} is not a form"}},
		{"nor a substring", "${HOST:1}", "", nil, []string{"${HOST:1…} is not a form"}},
		{"escape", "$${HOST} and $$HOST", "${HOST} and $$HOST", nil, nil},
		{"escape in default", "${NOPE:-$${HOST}}", "${HOST}", nil, nil},
		// "${" that no form of reference continues is text only when
		// no brace closes it on its line; closed, it is a mistyped
		// reference, which kept as written would become the value.
		{"not a reference", "${HOST and ${ x and ${5", "${HOST and ${ x and ${5", nil, nil},
		{"mistyped reference", "${not valid}|${1X}|${}|${my.var}", "|||", nil, []string{
			"${not valid} is not a reference", "${1X} is not a reference", "${} is not a reference", "${my.var} is not a reference"}},
		{"no brace before newline", "${NOPE:-x\nb: 1}", "x\nb: 1}", nil, []string{"${NOPE:- has no closing brace on its line"}},
		{"dollar alone", "$5", "$5", nil, nil},
		// A name that runs to the end of the value or its line is a
		// reference missing its brace: kept as text it would become a
		// token or an HMAC key anyone reading the file knows.
		{"name without a brace", "${LLMPROXY_ADMIN_TOKEN", "", nil, []string{"${LLMPROXY_ADMIN_TOKEN has no closing brace on its line"}},
		{"name without a brace before newline", "Bearer ${TOKEN\nx", "Bearer \nx", nil, []string{"${TOKEN has no closing brace"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, unset, fails, _ := expand(tt.in, lookup)
			if got != tt.want || !slices.Equal(unset, tt.unset) || len(fails) != len(tt.fails) {
				t.Fatalf("expand(%q) = %q, unset %q, fails %q; want %q, unset %q, fails %q", tt.in, got, unset, fails, tt.want, tt.unset, tt.fails)
			}
			for i, f := range tt.fails {
				if !strings.HasPrefix(fails[i], f) {
					t.Errorf("expand(%q) fails[%d] = %q, want it to start with %q", tt.in, i, fails[i], f)
				}
			}
		})
	}
}

func TestParseInterpolatesEnv(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_BACKEND", "http://vllm-7:8000")
	t.Setenv("LLMPROXY_TEST_RPS", "25")
	t.Setenv("LLMPROXY_TEST_EMPTY", "")
	y := `# ${LLMPROXY_TEST_BACKEND} and ${LLMPROXY_TEST_UNSET} in a comment are harmless
backends:
  - url: "${LLMPROXY_TEST_BACKEND}"
    headers:
      Authorization: "Bearer ${LLMPROXY_TEST_UNSET_KEY:-dev-key}"
      X-Empty: "${LLMPROXY_TEST_EMPTY:-}"
  - { url: ${LLMPROXY_TEST_BACKEND}/b, name: ${LLMPROXY_TEST_UNSET_NAME:-second} }
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
	if err == nil || !strings.Contains(err.Error(), "c.yaml:14: key rate_limit.bogus: unknown key") {
		t.Fatalf("got %v", err)
	}
	c, err := Parse([]byte(strings.Replace(y, "  bogus: 1\n", "", 1)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backends[0]
	if b.URL != "http://vllm-7:8000" || b.Headers["Authorization"] != "Bearer dev-key" || b.Headers["X-Empty"] != "" {
		t.Errorf("backend %+v", b)
	}
	if b := c.Backends[1]; b.URL != "http://vllm-7:8000/b" || b.Name != "second" {
		t.Errorf("backend in a flow mapping %+v", b)
	}
	if c.Admin.Listen != "127.0.0.1:8001" || c.Admin.Token != "${literal}" {
		t.Errorf("admin %+v", c.Admin)
	}
	if g := c.RateLimit.Global; g.RequestsPerSecond != 25 || g.BurstSize != 25 {
		t.Errorf("global %+v", g)
	}
}

// TestParseUnsetVariable: a variable that is not set and has no default is
// an error naming the line, the key and the variable, instead of an empty
// secret; ${VAR:-} asks for an empty value.
func TestParseUnsetVariable(t *testing.T) {
	y := minimal + `webhooks:
  - url: https://billing.internal/hook
    secret: "${LLMPROXY_TEST_UNSET_SECRET}"
admin:
  listen: 127.0.0.1:8001
  token: ${LLMPROXY_TEST_UNSET_TOKEN}
usage_hook:
  url: https://h.internal/${LLMPROXY_TEST_UNSET_A}/${LLMPROXY_TEST_UNSET_B}
  secret: "${LLMPROXY_TEST_UNSET_EMPTY:-}"
`
	_, err := Parse([]byte(y), "c.yaml")
	errs := mustErrors(t, err)
	want := []string{
		`c.yaml:5: key webhooks[0].secret: environment variable LLMPROXY_TEST_UNSET_SECRET is not set; write ${LLMPROXY_TEST_UNSET_SECRET:-default} to give a default, ${LLMPROXY_TEST_UNSET_SECRET:-} for an empty value`,
		// Only the unset variable: not also "the admin API needs a token".
		`c.yaml:8: key admin.token: environment variable LLMPROXY_TEST_UNSET_TOKEN is not set`,
		`c.yaml:10: key usage_hook.url: environment variables LLMPROXY_TEST_UNSET_A, LLMPROXY_TEST_UNSET_B are not set`,
	}
	if len(errs.List) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs.List), len(want), err)
	}
	for i, w := range want {
		if got := errs.List[i].Error(); !strings.HasPrefix(got, w) {
			t.Errorf("error %d = %q, want it to start with %q", i, got, w)
		}
	}
}

// TestParseRequiredAndUnreadReferences: ${VAR:?message} with VAR unset,
// and a form of reference the config does not read (a shell's
// ${VAR:=default}), are errors naming the line and the key, never a value
// kept as written: an admin token or a key that is literally
// "${ADMIN_TOKEN:?...}" is one anyone reading the file could use.
func TestParseRequiredAndUnreadReferences(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_SET_TOKEN", "s3cret-token")
	y := minimal + `admin: { listen: 127.0.0.1:8001, token: ${LLMPROXY_TEST_UNSET_TOKEN:?set LLMPROXY_TEST_UNSET_TOKEN to the admin token} }
webhooks:
  - url: https://billing.internal/hook
    secret: "${LLMPROXY_TEST_UNSET_SECRET:=dev}"
usage_hook:
  url: https://h.internal/hook
  secret: "${LLMPROXY_TEST_SET_TOKEN:?}"
`
	_, err := Parse([]byte(y), "c.yaml")
	errs := mustErrors(t, err)
	want := []string{
		`c.yaml:3: key admin.token: environment variable LLMPROXY_TEST_UNSET_TOKEN is not set: set LLMPROXY_TEST_UNSET_TOKEN to the admin token`,
		`c.yaml:6: key webhooks[0].secret: ${LLMPROXY_TEST_UNSET_SECRET:=…} is not a form LLMProxy reads`,
	}
	if len(errs.List) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs.List), len(want), err)
	}
	for i, w := range want {
		if got := errs.List[i].Error(); !strings.HasPrefix(got, w) {
			t.Errorf("error %d = %q, want it to start with %q", i, got, w)
		}
	}
	c, err := Parse([]byte(strings.NewReplacer("LLMPROXY_TEST_UNSET_TOKEN:", "LLMPROXY_TEST_SET_TOKEN:", ":=dev", ":-dev").Replace(y)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin.Token != "s3cret-token" || c.Webhooks[0].Secret != "dev" || c.UsageHook.Secret != "s3cret-token" {
		t.Errorf("admin token %q, webhook secret %q, usage hook secret %q", c.Admin.Token, c.Webhooks[0].Secret, c.UsageHook.Secret)
	}
}

// TestParseErrorsHideVariables: a problem with a value that came from a
// variable names the reference as written, never the value, which may be a
// secret given to the wrong key.
func TestParseErrorsHideVariables(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_SECRET", "s3cret\"value")
	t.Setenv("LLMPROXY_TEST_TOKEN", "tok-123")
	y := minimal + `webhooks:
  - url: https://billing.internal/hook
    secret: "${LLMPROXY_TEST_SECRET}"
    max_attempts: "${LLMPROXY_TEST_SECRET}"
    timeout: ${LLMPROXY_TEST_TOKEN}
base: &tok "pre-${LLMPROXY_TEST_TOKEN}"
admin:
  listen: *tok
  token: x
auth:
  storage: ${LLMPROXY_TEST_TOKEN}
`
	_, err := Parse([]byte(y), "c.yaml")
	errs := mustErrors(t, err)
	want := []string{
		`c.yaml:6: key webhooks[0].max_attempts: want an integer, got "${LLMPROXY_TEST_SECRET}"`,
		`c.yaml:7: key webhooks[0].timeout: want a duration such as 1s or 500ms, got "${LLMPROXY_TEST_TOKEN}"`,
		`c.yaml:8: key base: unknown key`,
		`c.yaml:10: key admin.listen: want host:port such as :8000 or 127.0.0.1:8000, got "pre-${LLMPROXY_TEST_TOKEN}"`,
		`c.yaml:13: key auth.storage: want one of file, redis, got "${LLMPROXY_TEST_TOKEN}"`,
	}
	if len(errs.List) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs.List), len(want), err)
	}
	for i, w := range want {
		if got := errs.List[i].Error(); got != w {
			t.Errorf("error %d = %q, want %q", i, got, w)
		}
	}
	for _, s := range []string{"s3cret", "tok-123"} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("an error shows %q:\n%v", s, err)
		}
	}
}

// TestParseValuesCannotChangeStructure: a value with a newline, a quote or
// ": " stays one string, and later lines keep their numbers.
func TestParseValuesCannotChangeStructure(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_NAME", "a\"\nlisten: \":1\"\nbogus: {x: 1}")
	t.Setenv("LLMPROXY_TEST_HEADER", "v # not a comment")
	y := minimal + `    name: ${LLMPROXY_TEST_NAME}
    headers: { X-A: ${LLMPROXY_TEST_HEADER}, X-B: "${LLMPROXY_TEST_HEADER}" }
`
	c, err := Parse([]byte(y), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Backends[0].Name != "a\"\nlisten: \":1\"\nbogus: {x: 1}" || c.Listen != DefaultListen {
		t.Errorf("name %q, listen %q", c.Backends[0].Name, c.Listen)
	}
	if h := c.Backends[0].Headers; h["X-A"] != "v # not a comment" || h["X-B"] != "v # not a comment" {
		t.Errorf("headers %q", h)
	}
	_, err = Parse([]byte(y+"routng: {}\n"), "c.yaml")
	if err == nil || !strings.HasPrefix(err.Error(), "c.yaml:5: key routng: unknown key") {
		t.Fatalf("got %v, want the unknown key on line 5", err)
	}
}

// TestEnvNullWordsStayText: a variable whose value is a YAML null word
// ("null", "~") fills the key with that text; read again as YAML it left a
// webhook unsigned, or Redis without its password, in silence. An empty
// value still counts as not written.
func TestEnvNullWordsStayText(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_NULL", "null")
	t.Setenv("LLMPROXY_TEST_TILDE", "~")
	c, err := Parse([]byte(minimal+"webhooks:\n  - url: http://hook:9000/a\n    secret: ${LLMPROXY_TEST_NULL}\n"+
		"redis: { url: \"redis://r:6379\", password: ${LLMPROXY_TEST_TILDE} }\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Webhooks[0].Secret != "null" || c.Redis.Password != "~" {
		t.Errorf("secret %q, password %q; want the variables' text", c.Webhooks[0].Secret, c.Redis.Password)
	}
}

// TestEmptyExpansionQuotedAsWritten: an error about a value a variable made
// empty quotes the value as written, as it does one the variable filled.
func TestEmptyExpansionQuotedAsWritten(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_EMPTY_MBB", "")
	_, err := Parse([]byte(minimal+"server: { max_body_bytes: \"${LLMPROXY_TEST_EMPTY_MBB}\" }\n"), "c.yaml")
	if err == nil || !strings.Contains(err.Error(), `"${LLMPROXY_TEST_EMPTY_MBB}"`) {
		t.Fatalf("got %v, want the value quoted as written", err)
	}
}

// TestNotAReferenceInAQuotedValue: a "${" no reference continues, in a
// quoted value followed on its line by a "}" of the file's own (a flow
// mapping's, a comment's), stays text; the "}" closed it and the value's
// quote went with it, and the file no longer parsed. A mistyped reference
// within its value is still an error.
func TestNotAReferenceInAQuotedValue(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_ZERO", "0")
	c, err := Parse([]byte("backends:\n  - { url: http://b:8000, headers: { X-Api-Key: \"k${ey 12\" } }\n"+
		"admin:\n  listen: \"127.0.0.1:8001\"\n  token: \"Xq7${ 9z!k\"   # rotated monthly {see runbook}\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Backends[0].Headers["X-Api-Key"] != "k${ey 12" || c.Admin.Token != "Xq7${ 9z!k" {
		t.Errorf("header %q, token %q; want them as written", c.Backends[0].Headers["X-Api-Key"], c.Admin.Token)
	}
	_, err = Parse([]byte(minimal+"admin: { listen: \"127.0.0.1:8001\", token: \"t-${my.var}\" }\n"), "c.yaml")
	if err == nil || !strings.Contains(err.Error(), "${my.var} is not a reference") {
		t.Errorf("a mistyped reference in a flow mapping: %v", err)
	}
	// A number a variable gives is named as written where the message
	// shows it ("got …"), and a bound the message names is left alone.
	_, err = Parse([]byte(minimal+"health_check: { path: /h, unhealthy_threshold: ${LLMPROXY_TEST_ZERO} }\n"), "c.yaml")
	if err == nil || !strings.Contains(err.Error(), "want more than 0;") {
		t.Errorf("a zero from a variable: %v", err)
	}
}

// TestMistypedReferenceUnquotedInAFlow: a mistyped reference written
// without quotes inside "{ … }" or "[ … ]" is named as such; its braces
// were read as the flow's and the file as bad YAML.
func TestMistypedReferenceUnquotedInAFlow(t *testing.T) {
	for _, y := range []string{
		"admin: { listen: \"127.0.0.1:8001\", token: t-${my.var} }\n",
		"backends:\n  - url: http://b:8000\n    models: [a, ${my.var}]\n",
	} {
		_, err := Parse([]byte(strings.Replace(minimal, "backends:\n  - url: http://b:8000\n", "", strings.Count(y, "backends"))+y), "c.yaml")
		if err == nil || !strings.Contains(err.Error(), "${my.var} is not a reference") {
			t.Errorf("%q: %v", y, err)
		}
	}
}

// TestEmptyHeaderIsNotWritten: a header whose unquoted value a variable
// leaves empty is not written, as any other such value: the backend gets
// no header, not an empty one. One written empty in quotes is kept.
func TestEmptyHeaderIsNotWritten(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_EMPTY_H", "")
	c, err := Parse([]byte("backends:\n  - url: http://b:8000\n    headers:\n      X-A: ${LLMPROXY_TEST_EMPTY_H-dflt}\n      X-B: ${LLMPROXY_TEST_EMPTY_H:-dflt}\n      X-C: \"\"\n      X-D: ${LLMPROXY_TEST_EMPTY_H:-}\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h := c.Backends[0].Headers
	if _, ok := h["X-A"]; ok || h["X-B"] != "dflt" || len(h) != 2 {
		t.Errorf("headers %q; want X-B: dflt and X-C empty, no X-A or X-D", h)
	}
	if v, ok := h["X-C"]; !ok || v != "" {
		t.Errorf("X-C %q, %v; want it kept empty", v, ok)
	}
}

// TestEmptySecretOrHeaderIsAnError: a plain ${VAR} whose variable is set
// but empty (a .env line "KEY=") is an error in a webhook's or the usage
// hook's secret and in a header, as an unset one is: the POSTs would go
// unsigned, the backend would get "Bearer ". ${VAR:-} asks for it on
// purpose; elsewhere an empty value is no error.
func TestEmptySecretOrHeaderIsAnError(t *testing.T) {
	t.Setenv("LLMPROXY_TEST_EMPTY", "")
	for _, c := range []struct{ yaml, key string }{
		{"backends:\n  - url: http://b:8000\n    headers: {Authorization: \"Bearer ${LLMPROXY_TEST_EMPTY}\"}\n", "backends[0].headers.Authorization"},
		{"backends:\n  - url: http://b:8000\n    headers:\n      X-Key: ${LLMPROXY_TEST_EMPTY}\n", "backends[0].headers.X-Key"},
		{"backends:\n  - url: http://b:8000\nwebhooks: [{name: w, url: \"http://h/x\", secret: \"${LLMPROXY_TEST_EMPTY}\"}]\n", "webhooks[0].secret"},
		{"backends:\n  - url: http://b:8000\nusage_hook: {url: \"http://h/x\", secret: ${LLMPROXY_TEST_EMPTY}}\n", "usage_hook.secret"},
	} {
		_, err := Parse([]byte(c.yaml), "c.yaml")
		if err == nil || !strings.Contains(err.Error(), "key "+c.key+":") || !strings.Contains(err.Error(), "LLMPROXY_TEST_EMPTY is set but empty") {
			t.Errorf("%q: %v; want an error at %s naming the empty variable", c.yaml, err, c.key)
		}
	}
	for _, y := range []string{
		"backends:\n  - url: http://b:8000\n    headers: {Authorization: \"Bearer ${LLMPROXY_TEST_EMPTY:-}\"}\n",
		"backends:\n  - url: http://b:8000\nwebhooks: [{name: w, url: \"http://h/x\", secret: \"${LLMPROXY_TEST_EMPTY:-}\"}]\n",
		"backends:\n  - url: http://b:8000\nredis: {url: \"redis://127.0.0.1:6379\", password: \"${LLMPROXY_TEST_EMPTY}\"}\n",
	} {
		if _, err := Parse([]byte(y), "c.yaml"); err != nil {
			t.Errorf("%q: %v; want no error", y, err)
		}
	}
}
