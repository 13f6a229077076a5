package config

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestAPIKeyHashAndPublicID(t *testing.T) {
	sum := sha256.Sum256([]byte("sk-x"))
	h := hex.EncodeToString(sum[:])
	tests := []struct {
		name     string
		key      APIKey
		hash, id string
	}{
		{"plaintext", APIKey{Key: "sk-x"}, h, "key_" + h[:12]},
		{"hash given, upper case", APIKey{KeySHA256: strings.ToUpper(h)}, h, "key_" + h[:12]},
		{"explicit id", APIKey{Key: "sk-x", ID: "team-a"}, h, "team-a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.key.Hash(); got != tt.hash {
				t.Errorf("Hash = %q, want %q", got, tt.hash)
			}
			if got := tt.key.PublicID(); got != tt.id {
				t.Errorf("PublicID = %q, want %q", got, tt.id)
			}
		})
	}
}

func TestEndpointsAndWebhookDefaults(t *testing.T) {
	y := minimal + `webhooks:
  - url: https://billing.internal/llm-usage
  - url: https://billing.internal/llm-usage
    secret: s
  - url: https://audit.example.com/
    name: audit
    max_attempts: 3
    unauthenticated: true
usage_hook:
  url: https://h.example.com/u
`
	c, err := Parse([]byte(y), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	eps := c.Endpoints()
	var names []string
	for _, e := range eps {
		names = append(names, e.Name)
	}
	if got := strings.Join(names, ","); got != "billing-internal-cb300ce2,billing-internal-cb300ce2-2,audit,usage_hook" {
		t.Errorf("names %s", got)
	}
	if eps[0].LegacyName != "billing-internal-llm-usage" || eps[1].LegacyName != "billing-internal-llm-usage-2" || eps[2].LegacyName != "" {
		t.Errorf("legacy names %q, %q, %q", eps[0].LegacyName, eps[1].LegacyName, eps[2].LegacyName)
	}
	w := eps[0]
	if w.Timeout.D() != 5*time.Second || w.MaxAttempts != 10 || w.MaxAge.D() != 24*time.Hour {
		t.Errorf("webhook defaults %+v", w)
	}
	if eps[2].MaxAttempts != 3 || !eps[2].Unauthenticated || eps[0].Unauthenticated || eps[3].Unauthenticated {
		t.Errorf("audit %+v", eps[2])
	}
	u := eps[3]
	if u.MaxAttempts != 3 || u.Timeout.D() != 5*time.Second || u.URL != "https://h.example.com/u" {
		t.Errorf("usage hook endpoint %+v (default retry 2 → 3 attempts)", u)
	}

	c, err = Parse([]byte(minimal+"usage_hook:\n  enabled: false\n  url: https://h/u\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Endpoints()) != 0 {
		t.Errorf("disabled usage hook listed: %+v", c.Endpoints())
	}
}

// TestWebhookDefaultNameHidesThePath: Slack and Discord put the webhook's
// secret in the URL's path; the default name, which reaches metrics, logs
// and consumer names, holds only the host and a hash of the URL, the same
// whatever the order of the endpoints.
func TestWebhookDefaultNameHidesThePath(t *testing.T) {
	const (
		slack     = "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/XyZsEcReTtOkEn0123456789"
		slack2    = "https://hooks.slack.com/services/T0123ABCD/B0789IJKL/AnOtHeRsEcReT9876543210"
		discord   = "https://discord.com/api/webhooks/123456789012345678/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
		withCreds = "https://user:pa55word@hooks.example.com:8443/x?token=q1w2e3#frag"
	)
	parse := func(urls ...string) map[string]Webhook {
		t.Helper()
		y := minimal + "webhooks:\n"
		for _, u := range urls {
			y += "  - url: " + u + "\n"
		}
		y += "  - url: " + slack + "\n    name: team-alerts\n"
		c, err := Parse([]byte(y), "c.yaml")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]Webhook{}
		for _, w := range c.Webhooks[:len(urls)] {
			out[w.URL] = w
		}
		if w := c.Webhooks[len(urls)]; w.Name != "team-alerts" || w.LegacyName != "" {
			t.Errorf("explicit name became %q (legacy %q)", w.Name, w.LegacyName)
		}
		return out
	}
	got := parse(slack, slack2, discord, withCreds)
	hosts := map[string]string{slack: "hooks-slack-com", slack2: "hooks-slack-com", discord: "discord-com", withCreds: "hooks-example-com-8443"}
	for u, w := range got {
		if !regexp.MustCompile(`^` + hosts[u] + `-[0-9a-f]{8}$`).MatchString(w.Name) {
			t.Errorf("name %q of %s: want %s-<8 hex digits>", w.Name, u, hosts[u])
		}
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		sep := func(r rune) bool { return r == '/' || r == '=' || r == ':' }
		pieces := strings.FieldsFunc(parsed.Path+"/"+parsed.RawQuery+"/"+parsed.Fragment+"/"+parsed.User.String(), sep)
		for _, p := range pieces {
			if p = strings.ToLower(p); len(p) >= 4 && strings.Contains(w.Name, p[:4]) {
				t.Errorf("name %q of %s holds the start of %q", w.Name, u, p)
			}
		}
		if w.LegacyName != slug(u) {
			t.Errorf("legacy name of %s = %q, want %q", u, w.LegacyName, slug(u))
		}
	}
	if got[slack].Name == got[slack2].Name {
		t.Errorf("two Slack webhooks share the name %q", got[slack].Name)
	}
	for u, w := range parse(withCreds, discord, slack2, slack) {
		if w.Name != got[u].Name {
			t.Errorf("name of %s is %q in one order, %q in another", u, got[u].Name, w.Name)
		}
	}
}

func TestEnabledDefaults(t *testing.T) {
	tests := []struct {
		name                       string
		yaml                       string
		auth, rate, global, perKey bool
	}{
		{"nothing set", "", false, true, false, false},
		{"keys turn auth on", "api_keys: [{key: sk-a}]\n", true, true, false, false},
		{"auth off wins", "auth: {enabled: false}\napi_keys: [{key: sk-a}]\n", false, true, false, false},
		{"redis keys turn auth on", "redis: {url: redis://r:6379}\nauth: {storage: redis}\n", true, true, false, false},
		{"a rate turns limits on", "rate_limit: {global: {requests_per_second: 2.5}, per_key: {max_concurrent: 1}}\n", false, true, true, true},
		{"limits off", "rate_limit: {enabled: false, global: {enabled: false, requests_per_second: 5}}\n", false, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(minimal+tt.yaml), "c.yaml")
			if err != nil {
				t.Fatal(err)
			}
			rl := c.RateLimit
			if c.AuthEnabled() != tt.auth || c.RateLimitEnabled() != tt.rate ||
				rl.Global.IsEnabled() != tt.global || rl.PerKey.IsEnabled() != tt.perKey {
				t.Errorf("auth %v rate %v global %v perKey %v", c.AuthEnabled(), c.RateLimitEnabled(),
					rl.Global.IsEnabled(), rl.PerKey.IsEnabled())
			}
			if *c.Auth.Enabled != tt.auth || *rl.Global.Enabled != tt.global || *rl.PerKey.Enabled != tt.perKey {
				t.Errorf("defaults did not fill the switches: %+v", rl)
			}
		})
	}
	c, _ := Parse([]byte(minimal+"rate_limit: {global: {requests_per_second: 2.5}}\n"), "c.yaml")
	if c.RateLimit.Global.BurstSize != 3 {
		t.Errorf("burst %d, want ceil(2.5) = 3", c.RateLimit.Global.BurstSize)
	}
}

func TestDataPath(t *testing.T) {
	c := &Config{}
	if got := c.DataPath("nats"); got != filepath.Join("data", "nats") {
		t.Errorf("default DataPath = %q", got)
	}
	c.DataDir = "/var/lib/llmproxy"
	if got := c.DataPath("ledger", "db"); got != "/var/lib/llmproxy/ledger/db" {
		t.Errorf("DataPath = %q", got)
	}
}

func TestKeyLimitsOverridePerKeyFieldByField(t *testing.T) {
	const perKey = "rate_limit: {per_key: {requests_per_minute: 100, tokens_per_minute: 1000, max_concurrent: 5}}\n"
	const off = "rate_limit: {per_key: {enabled: false, requests_per_minute: 100, tokens_per_minute: 1000}}\n"
	tests := []struct {
		name, yaml, limits string // limits: the key's limits block, "" for none
		want               *PerKeyLimits
		on                 bool
	}{
		{"no block: per_key applies", perKey, "", nil, true},
		{"empty block inherits everything", perKey, "{}", &PerKeyLimits{RequestsPerMinute: 100, TokensPerMinute: 1000, MaxConcurrent: 5}, true},
		{"one field replaced", perKey, "{max_concurrent: 2}", &PerKeyLimits{RequestsPerMinute: 100, TokensPerMinute: 1000, MaxConcurrent: 2}, true},
		{"zero is no limit of that kind", perKey, "{tokens_per_minute: 0}", &PerKeyLimits{RequestsPerMinute: 100, MaxConcurrent: 5}, true},
		{"null is left out", perKey, "{tokens_per_minute: ~}", &PerKeyLimits{RequestsPerMinute: 100, TokensPerMinute: 1000, MaxConcurrent: 5}, true},
		{"every limit zero", perKey, "{requests_per_minute: 0, tokens_per_minute: 0, max_concurrent: 0}", &PerKeyLimits{}, false},
		{"switched off", perKey, "{enabled: false}", &PerKeyLimits{RequestsPerMinute: 100, TokensPerMinute: 1000, MaxConcurrent: 5}, false},
		{"per_key off: only the key's own", off, "{max_concurrent: 2}", &PerKeyLimits{MaxConcurrent: 2}, true},
		{"per_key off, empty block", off, "{}", &PerKeyLimits{}, false},
		{"no per_key", "", "{requests_per_second: 1.5}", &PerKeyLimits{RequestsPerSecond: 1.5}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := "api_keys: [{key: sk-a}]\n"
			if tt.limits != "" {
				key = "api_keys: [{key: sk-a, limits: " + tt.limits + "}]\n"
			}
			c, err := Parse([]byte(minimal+tt.yaml+key), "c.yaml")
			if err != nil {
				t.Fatal(err)
			}
			got := c.APIKeys[0].Limits
			if tt.want == nil {
				if got != nil {
					t.Fatalf("limits = %+v, want nil", got)
				}
				return
			}
			if got == nil {
				t.Fatal("limits = nil")
			}
			if got.Enabled == nil || got.IsEnabled() != tt.on {
				t.Errorf("enabled = %v, want %v", got.Enabled, tt.on)
			}
			g := *got
			g.Enabled = nil
			if g != *tt.want {
				t.Errorf("limits = %+v, want %+v", g, *tt.want)
			}
		})
	}
}

// TestWebhookNamesFitAConsumerName: a webhook name names a NATS consumer
// ("notifier-" and the name, at most 255 characters): a longer one is a
// config error with its line, and a default name made from a long host is
// cut to fit, as is the former name the notifier looks for.
func TestWebhookNamesFitAConsumerName(t *testing.T) {
	long := strings.Repeat("n", MaxWebhookName+1)
	_, err := Parse([]byte(minimal+"webhooks:\n  - url: https://a/b\n    name: "+long+"\n"), "c.yaml")
	if err == nil || !strings.Contains(err.Error(), "webhooks[0].name: want at most 200 characters") || !strings.Contains(err.Error(), "c.yaml:") {
		t.Fatalf("a %d-character name: %v", len(long), err)
	}
	host := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	c, err := Parse([]byte(minimal+"webhooks:\n  - url: https://"+host+"/"+strings.Repeat("p", 100)+"\n  - url: https://"+host+"/"+strings.Repeat("p", 100)+"\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range c.Webhooks {
		if len(w.Name) > MaxWebhookName || len(w.LegacyName) > 255-len("notifier-") {
			t.Errorf("default name %d characters (former %d)", len(w.Name), len(w.LegacyName))
		}
	}
	if c.Webhooks[0].Name == c.Webhooks[1].Name {
		t.Errorf("two endpoints named %q", c.Webhooks[0].Name)
	}
}
