package config

import (
	"strings"
	"testing"
	"time"
)

const minimal = "backends:\n  - url: http://b:8000\n"

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must appear, in order, one per line
	}{
		{
			name: "unknown top-level key",
			yaml: minimal + "listne: \":8000\"\n",
			want: []string{`c.yaml:3: key listne: unknown key (did you mean "listen"?)`},
		},
		{
			name: "unknown nested keys all reported",
			yaml: minimal + "routing:\n  retry:\n    max_retry: 2\n    colour: red\nrate_limit:\n  per_key:\n    rpm: 5\n",
			want: []string{
				`c.yaml:5: key routing.retry.max_retry: unknown key (did you mean "max_retries"?)`,
				`c.yaml:6: key routing.retry.colour: unknown key`,
				`c.yaml:9: key rate_limit.per_key.rpm: unknown key`,
			},
		},
		{
			name: "unknown key in a list item",
			yaml: "backends:\n  - url: http://a:1\n  - url: http://b:2\n    wieght: 3\n",
			want: []string{`c.yaml:4: key backends[1].wieght: unknown key (did you mean "weight"?)`},
		},
		{
			name: "bad duration",
			yaml: minimal + "routing:\n  retry:\n    initial_wait: 5\n    max_wait: soon\n",
			want: []string{
				`c.yaml:5: key routing.retry.initial_wait: want a duration such as 1s or 500ms, got "5"`,
				`c.yaml:6: key routing.retry.max_wait: want a duration such as 1s or 500ms, got "soon"`,
			},
		},
		{
			name: "wrong types",
			yaml: "listen: [a, b]\nbackends:\n  - url: http://b:8000\n    weight: heavy\nrate_limit:\n  enabled: maybe\n  global:\n    requests_per_second: lots\n",
			want: []string{
				`c.yaml:1: key listen: want a string, not a list`,
				`c.yaml:4: key backends[0].weight: want an integer, got "heavy"`,
				`c.yaml:6: key rate_limit.enabled: want true or false, got "maybe"`,
				`c.yaml:8: key rate_limit.global.requests_per_second: want a number, got "lots"`,
			},
		},
		{
			name: "a rate that would read as 0",
			yaml: minimal + "rate_limit:\n  per_key: { requests_per_second: 1e-400 }\n  global: { requests_per_second: 0.0e-999 }\napi_keys:\n  - key: sk-1\n    limits: { requests_per_second: -0x1p-2000 }\n",
			want: []string{
				`c.yaml:4: key rate_limit.per_key.requests_per_second: "1e-400" is too small to hold: it would read as 0, which means none`,
				`c.yaml:8: key api_keys[0].limits.requests_per_second: "-0x1p-2000" is too small to hold: it would read as 0, which means none`,
			},
		},
		{
			name: "fractional integer",
			yaml: minimal + "api_keys:\n  - key: sk-1\n    total_quota: 1.5\n",
			want: []string{`c.yaml:5: key api_keys[0].total_quota: want an integer, got "1.5"`},
		},
		{
			name: "list where a mapping belongs",
			yaml: minimal + "routing: [round_robin]\n",
			want: []string{`c.yaml:3: key routing: want a mapping of keys, not a list`},
		},
		{
			name: "duplicate key",
			yaml: minimal + "listen: \":1\"\nlisten: \":2\"\n",
			want: []string{`c.yaml:4: key listen: duplicate key (first set on line 3)`},
		},
		{
			name: "syntax error",
			yaml: "backends:\n  - url: http://b:8000\n   weight: 1\n",
			want: []string{`c.yaml:2: invalid YAML: did not find expected '-' indicator`},
		},
		{
			// yaml.v3 gives a parser error's line 0-based, at the start
			// of the construct left open: the brace is on line 3.
			name: "unclosed brace",
			yaml: "backends:\n  - url: http://b:8000\nlogging: {level: info\nauth: {}\n",
			want: []string{`c.yaml:3: invalid YAML: did not find expected ',' or '}' (the '{' opened on this line is not closed)`},
		},
		{
			// yaml.v3 names the line where it gave up, lines after
			// the bracket; the bracket's line is the one to fix.
			name: "bracket left open lines above",
			yaml: "listen: [\ndata_dir: \"it's [x\"\nbackends:\n  - url: http://b:8000 # a [comment\n",
			want: []string{`c.yaml:1: invalid YAML: did not find expected ',' or ']' (the '[' opened on this line is not closed)`},
		},
		{
			// A bracket inside a plain value opens nothing: the error
			// is the line out of place, as the parser says.
			name: "brackets in plain values",
			yaml: "backends:\n  - url: http://b:8000\nlogging:\n  redact:\n    - \\[REDACTED\n    - name: a[1\n    - name: a - [1\n    - name: why? {1\n  level: info\n bad: 1\n",
			want: []string{`c.yaml:10: invalid YAML: did not find expected key (a line of the block that starts here is out of place)`},
		},
		{
			name: "unclosed bracket",
			yaml: "a: 1\nb: 2\nrouting: [oops\n",
			want: []string{`c.yaml:3: invalid YAML: did not find expected ',' or ']'`},
		},
		{
			name: "scanner errors are 1-based already",
			yaml: "listen: \":1\"\n\tdata_dir: x\n",
			want: []string{`c.yaml:2: invalid YAML: found character that cannot start any token`},
		},
		{
			// yaml.v3 numbers no line for an error on the first.
			name: "an error on the first line",
			yaml: "listen: @x\nbackends: []\n",
			want: []string{`c.yaml:1: invalid YAML: found character that cannot start any token`},
		},
		{
			name: "a control character",
			yaml: minimal + "listen: \"a\x01\"\n",
			want: []string{`c.yaml:3: invalid YAML: control characters are not allowed`},
		},
		{
			name: "bad UTF-8",
			yaml: minimal + "# \u00e9 fine\nlisten: \"\xff\"\n",
			want: []string{`c.yaml:4: invalid YAML: invalid leading UTF-8 octet`},
		},
		{
			name: "an alias of no anchor",
			yaml: minimal + "# not *lg here\nlisten: \"*lg\"\ndata_dir: 'it''s *lg x'\nadmin:\n  token: \"a\n    *lg b\"\n  listen: x *lg\nroutin: >-\n  *lg\nfoo: a*lgx\nlogging: *lg\nauth: *lg\n",
			want: []string{`c.yaml:13: invalid YAML: unknown anchor 'lg' referenced`},
		},
		{
			name: "an alias of no anchor as a key",
			yaml: minimal + "logging:\n  *lg: x\n",
			want: []string{`c.yaml:4: invalid YAML: unknown anchor 'lg' referenced`},
		},
		{
			name: "an alias of no anchor in a second document",
			yaml: minimal + "---\nlogging: *lg\n",
			want: []string{`c.yaml:4: invalid YAML: unknown anchor 'lg' referenced`},
		},
		{
			name: "an alias of no anchor, lines ended by CR alone",
			yaml: "backends:\r  - url: http://b:8000\rlogging: *lg\r",
			want: []string{`c.yaml:3: invalid YAML: unknown anchor 'lg' referenced`},
		},
		{
			name: "a control character, lines ended by CR alone",
			yaml: "backends:\r  - url: http://b:8000\rlisten: \"a\x01\"\r",
			want: []string{`c.yaml:3: invalid YAML: control characters are not allowed`},
		},
		{
			name: "top level not a mapping",
			yaml: "- a\n- b\n",
			want: []string{`c.yaml:1: want a mapping of keys at the top level, not a list`},
		},
		{
			name: "two documents",
			yaml: minimal + "---\nlisten: \":1\"\n",
			want: []string{`only one YAML document is allowed`},
		},
		{
			name: "empty file",
			yaml: "",
			want: []string{`c.yaml: key backends: at least one backend is required`},
		},
		{
			name: "type error is not repeated by validation",
			yaml: "backends: http://b:8000\n",
			want: []string{`c.yaml:1: key backends: want a list, not a single value`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "c.yaml")
			errs := mustErrors(t, err)
			if len(errs.List) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs.List), len(tt.want), err)
			}
			for i, w := range tt.want {
				if got := errs.List[i].Error(); !strings.Contains(got, w) {
					t.Errorf("error %d = %q, want it to contain %q", i, got, w)
				}
			}
			if got := len(strings.Split(err.Error(), "\n")); got != len(tt.want) {
				t.Errorf("Error() has %d lines, want %d", got, len(tt.want))
			}
		})
	}
}

func TestParseAnchorsAndMerge(t *testing.T) {
	yaml := `
base: &base
  weight: 4
  connect_timeout: 1s
`
	// An anchor on an unknown key is still an unknown key.
	if _, err := Parse([]byte(yaml+minimal), "c.yaml"); err == nil || !strings.Contains(err.Error(), "key base: unknown key") {
		t.Fatalf("got %v", err)
	}
	yaml = `
backends:
  - &b1
    url: http://a:1
    weight: 4
    connect_timeout: 1s
  - <<: *b1
    url: http://b:2
`
	c, err := Parse([]byte(yaml), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backends[1]
	if b.URL != "http://b:2" || b.Weight != 4 || b.ConnectTimeout.D() != time.Second {
		t.Errorf("merged backend = %+v", b)
	}
}

func TestParseSelfReferentialAlias(t *testing.T) {
	for _, y := range []string{
		"backends: &a [*a]\n",
		"routing: &r\n  retry:\n    <<: *r\n" + minimal,
	} {
		if _, err := Parse([]byte(y), "c.yaml"); err == nil {
			t.Errorf("%q: want an error", y)
		}
	}
}

func TestParseNullMeansUnset(t *testing.T) {
	c, err := Parse([]byte(minimal+"listen:\nusage_hook:\n  retry: ~\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != DefaultListen || c.UsageHook.Retry != 2 {
		t.Errorf("listen %q retry %d", c.Listen, c.UsageHook.Retry)
	}
}

func TestParseZeroWrittenOnPurpose(t *testing.T) {
	y := "backends:\n  - url: http://a:1\n  - url: http://b:2\n    weight: 0\n" +
		"routing:\n  retry:\n    max_retries: 0\nusage_hook:\n  url: https://h/x\n  retry: 0\n"
	c, err := Parse([]byte(y), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Backends[0].Weight != 1 || c.Backends[1].Weight != 0 {
		t.Errorf("weights %d %d, want 1 0", c.Backends[0].Weight, c.Backends[1].Weight)
	}
	if c.Routing.Retry.MaxRetries != 0 {
		t.Errorf("max_retries = %d, want 0", c.Routing.Retry.MaxRetries)
	}
	if eps := c.Endpoints(); len(eps) != 1 || eps[0].MaxAttempts != 1 {
		t.Errorf("endpoints %+v, want one with 1 attempt", eps)
	}
}
