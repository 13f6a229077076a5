package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// mustErrors returns err as *Errors, failing the test when it is not one.
func mustErrors(t *testing.T, err error) *Errors {
	t.Helper()
	if err == nil {
		t.Fatal("want an error, got none")
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("want *Errors, got %T: %v", err, err)
	}
	return errs
}

// paths lists the key paths the errors name.
func paths(errs *Errors) []string {
	var out []string
	for _, e := range errs.List {
		out = append(out, e.Path)
	}
	return out
}

func TestUpstreamCustomerService(t *testing.T) {
	c, err := Load("testdata/upstream/01-customer-service.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Backends) != 3 {
		t.Fatalf("backends: got %d, want 3", len(c.Backends))
	}
	for i, b := range c.Backends {
		if b.Weight != 10 {
			t.Errorf("backends[%d].weight = %d, want 10", i, b.Weight)
		}
		if b.Name != b.URL {
			t.Errorf("backends[%d].name = %q, want the URL", i, b.Name)
		}
	}
	r := c.Routing.Retry
	if !r.Enabled || r.MaxRetries != 2 {
		t.Errorf("retry = %+v, want enabled with 2 retries", r)
	}
	if len(c.Routing.Fallback) != 1 {
		t.Fatalf("fallback: got %d entries", len(c.Routing.Fallback))
	}
	f := c.Routing.Fallback[0]
	if i, ok := c.FindBackend(f.Primary); !ok || i != 0 {
		t.Errorf("fallback primary %q resolves to %d, %v", f.Primary, i, ok)
	}
	for j, name := range f.Fallback {
		if i, ok := c.FindBackend(name); !ok || i != j+1 {
			t.Errorf("fallback[%d] %q resolves to %d, %v", j, name, i, ok)
		}
	}
	g := c.RateLimit.Global
	if !c.RateLimitEnabled() || !g.IsEnabled() || g.RequestsPerSecond != 500 || g.BurstSize != 500 {
		t.Errorf("global limit = %+v, want on at 500 rps, burst 500", g)
	}
	if c.RateLimit.PerKey.IsEnabled() {
		t.Error("per-key limits on with no limit set")
	}
	if c.AuthEnabled() {
		t.Error("auth on with no keys")
	}
	if c.Routing.LoadBalanceStrategy != "round_robin" || c.Listen != ":8000" {
		t.Errorf("defaults: strategy %q listen %q", c.Routing.LoadBalanceStrategy, c.Listen)
	}
}

func TestUpstreamEnterpriseAssistantNeedsBackends(t *testing.T) {
	_, err := Load("testdata/upstream/02-enterprise-assistant.yaml")
	errs := mustErrors(t, err)
	if got := paths(errs); len(got) != 1 || got[0] != "backends" {
		t.Fatalf("errors name %v, want only backends:\n%v", got, err)
	}
	if !strings.Contains(err.Error(), "02-enterprise-assistant.yaml: key backends: ") {
		t.Errorf("message %q", err)
	}

	// With a backend the rest of the file means what it says.
	data, _ := os.ReadFile("testdata/upstream/02-enterprise-assistant.yaml")
	data = append(data, "\nbackends:\n  - url: http://tgi-1:8080\n  - url: http://tgi-2:8080\n"...)
	c, err := Parse(data, "02.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pk := c.RateLimit.PerKey
	if !pk.IsEnabled() || *pk.Enabled != true || pk.RequestsPerMinute != 100 || pk.MaxConcurrent != 5 {
		t.Errorf("per_key = %+v, want on with 100 rpm and 5 concurrent", pk)
	}
	if !c.AuthEnabled() || len(c.APIKeys) != 2 {
		t.Fatalf("auth %v keys %d", c.AuthEnabled(), len(c.APIKeys))
	}
	k := c.APIKeys[0]
	if *k.TotalQuota != 500000 || k.AllowedIPs[0] != "10.0.1.0/24" || k.Status != "active" || k.QuotaResetPeriod != "monthly" {
		t.Errorf("key 0 = %+v", k)
	}
}

func TestUpstreamModelProviderNeedsRedis(t *testing.T) {
	_, err := Load("testdata/upstream/03-model-provider.yaml")
	errs := mustErrors(t, err)
	if got := paths(errs); len(got) != 1 || got[0] != "auth.storage" {
		t.Fatalf("errors name %v, want only auth.storage:\n%v", got, err)
	}
	want := `03-model-provider.yaml:13: key auth.storage: "redis" needs redis.url (or redis.addrs, or redis.sentinel) to say where Redis is`
	if !strings.HasSuffix(err.Error(), want) {
		t.Errorf("got %q, want it to end in %q", err, want)
	}
}

func TestUpstreamReference(t *testing.T) {
	data, err := os.ReadFile("testdata/upstream/04-reference.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(data, "04-reference.yaml")
	errs := mustErrors(t, err)
	if got := paths(errs); len(got) != 1 || got[0] != "rate_limit.storage" {
		t.Fatalf("errors name %v, want only rate_limit.storage:\n%v", got, err)
	}
	if errs.List[0].Line != 48 || !strings.Contains(err.Error(), "needs redis.url") {
		t.Errorf("got %v", err)
	}

	data = append(data, "\nredis: {url: redis://127.0.0.1:6379}\n"...)
	c, err := Parse(data, "04-reference.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":8000" || len(c.Backends) != 2 || c.Backends[0].URL != "http://vllm:8000" ||
		c.Backends[0].Weight != 5 || c.Backends[1].URL != "http://tgi:8081" || c.Backends[1].Weight != 3 {
		t.Errorf("listen/backends = %q %+v", c.Listen, c.Backends)
	}
	u := c.UsageHook
	if !u.IsEnabled() || u.URL != "https://your-billing.com/llm-usage" || u.Timeout.D() != time.Second || u.Retry != 2 {
		t.Errorf("usage_hook = %+v", u)
	}
	eps := c.Endpoints()
	if len(eps) != 1 || eps[0].Name != UsageHookName || eps[0].MaxAttempts != 3 || eps[0].Timeout.D() != time.Second || eps[0].URL != u.URL {
		t.Errorf("endpoints = %+v", eps)
	}
	h := c.HealthCheck
	if !h.IsEnabled() || h.Path != "/health" || h.Interval.D() != 10*time.Second {
		t.Errorf("health_check = %+v", h)
	}
	r := c.Routing
	if r.LoadBalanceStrategy != "least_connections" || !r.Retry.Enabled || r.Retry.MaxRetries != 3 ||
		r.Retry.InitialWait.D() != time.Second || r.Retry.MaxWait.D() != 10*time.Second || r.Retry.Multiplier != 2.0 {
		t.Errorf("routing = %+v", r)
	}
	a := c.Auth
	if !c.AuthEnabled() || a.Storage != "file" || a.Defaults.QuotaResetPeriod != "monthly" || a.Defaults.TotalQuota != 1000000 {
		t.Errorf("auth = %+v", a)
	}
	if len(c.APIKeys) != 1 {
		t.Fatalf("api_keys: %d", len(c.APIKeys))
	}
	k := c.APIKeys[0]
	if k.Key != "sk-llmproxy-test123" || k.Name != "Test key" || k.UserID != "user_001" || k.Status != "active" ||
		*k.TotalQuota != 100000 || k.QuotaResetPeriod != "daily" || len(k.AllowedIPs) != 1 ||
		k.AllowedIPs[0] != "192.168.1.0/24" || k.ExpiresAt != "2026-12-31T23:59:59Z" {
		t.Errorf("key = %+v", k)
	}
	if k.ID != k.PublicID() || !strings.HasPrefix(k.ID, "key_") || len(k.ID) != 16 {
		t.Errorf("key id = %q", k.ID)
	}
	rl := c.RateLimit
	if !c.RateLimitEnabled() || rl.Storage != "redis" || !rl.Global.IsEnabled() || rl.Global.RequestsPerSecond != 1000 ||
		rl.Global.BurstSize != 2000 || !rl.PerKey.IsEnabled() || rl.PerKey.RequestsPerSecond != 10 ||
		rl.PerKey.RequestsPerMinute != 500 || rl.PerKey.TokensPerMinute != 100000 || rl.PerKey.MaxConcurrent != 5 {
		t.Errorf("rate_limit = %+v", rl)
	}
}

func TestQuickstartLoads(t *testing.T) {
	t.Setenv("LLMPROXY_ADMIN_TOKEN", "")
	c, err := Load("../../examples/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:8080" || c.Admin.Listen != "127.0.0.1:8081" || c.Admin.Token != "change-me" {
		t.Errorf("listen %q admin %+v", c.Listen, c.Admin)
	}
	if len(c.Backends) != 1 || c.Backends[0].URL != "http://127.0.0.1:9000" {
		t.Errorf("backends %+v", c.Backends)
	}
	if len(c.APIKeys) != 1 || c.APIKeys[0].Key != "sk-llmproxy-demo-123" || c.APIKeys[0].UserID != "demo-user" ||
		*c.APIKeys[0].TotalQuota != 1000000 || c.APIKeys[0].QuotaResetPeriod != "daily" {
		t.Errorf("api_keys %+v", c.APIKeys)
	}
	if !c.AuthEnabled() || c.UsageHook.IsEnabled() || len(c.Endpoints()) != 0 {
		t.Errorf("auth %v usage hook %v", c.AuthEnabled(), c.UsageHook.IsEnabled())
	}
	if got := c.DataPath("ledger"); got != filepath.Join("data", "ledger") {
		t.Errorf("DataPath = %q", got)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	mustErrors(t, err)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("want os.ErrNotExist inside, got %v", err)
	}
}

// TestBackendURLCredentialsBecomeAHeader: user:password in a backend's URL
// leave the URL, which names the backend in events, metrics and logs, and
// become its Authorization header (HTTP Basic), unless one is set already.
func TestBackendURLCredentialsBecomeAHeader(t *testing.T) {
	c, err := Parse([]byte(`
backends:
  - url: http://bob:s3cret@vllm-1:8000/
  - url: http://alice:0ther@vllm-2:8000
    headers: { authorization: "Bearer tok" }
  - url: http://vllm-3:8000
    name: three
`), "")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backends
	if b[0].URL != "http://vllm-1:8000/" || b[0].Name != b[0].URL || b[0].Headers["Authorization"] != "Basic Ym9iOnMzY3JldA==" {
		t.Errorf("backend 0: url %q, name %q, headers %v", b[0].URL, b[0].Name, b[0].Headers)
	}
	if b[1].URL != "http://vllm-2:8000" || len(b[1].Headers) != 1 || b[1].Headers["authorization"] != "Bearer tok" {
		t.Errorf("backend 1: url %q, headers %v", b[1].URL, b[1].Headers)
	}
	if b[2].URL != "http://vllm-3:8000" || b[2].Headers != nil {
		t.Errorf("backend 2: url %q, headers %v", b[2].URL, b[2].Headers)
	}
	for _, x := range b {
		if strings.Contains(x.URL+x.Name, "s3cret") || strings.Contains(x.URL+x.Name, "0ther") {
			t.Errorf("a password is left in %q / %q", x.URL, x.Name)
		}
	}
}

// TestTLSFiles: the files of nats.tls, nats.credentials and redis.tls are
// read relative to the config file's directory, and checked when it is
// loaded: a file that cannot be read, a CA file without a certificate, a
// certificate without its key, and files for servers that are not there
// are errors with their lines.
func TestTLSFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A user's .creds as nsc writes it, and one whose parts are damaged.
	account, _ := nkeys.CreateAccount()
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	token, err := jwt.NewUserClaims(pub).Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(token, seed)
	if err != nil {
		t.Fatal(err)
	}
	damaged := "-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\nSUAM\n------END USER NKEY SEED------\n"
	for name, b := range map[string][]byte{"user.creds": creds, "damaged.creds": []byte(damaged)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "c.yaml")
	write := func(y string) {
		if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(minimal + "nats:\n  url: tls://n:4222\n  credentials: user.creds\n  tls: { cert_file: client.pem, key_file: client-key.pem }\n")
	c, err := Load(path)
	if err == nil {
		t.Fatal("a client certificate that is not there was accepted")
	}
	if !strings.Contains(err.Error(), "c.yaml:6: key nats.tls: cert_file: cannot read "+filepath.Join(dir, "client.pem")) {
		t.Errorf("missing certificate: %v", err)
	}
	write(minimal + "nats:\n  url: tls://n:4222\n  credentials: user.creds\n")
	if c, err = Load(path); err != nil || c.NATS.Credentials != filepath.Join(dir, "user.creds") {
		t.Fatalf("credentials file: %v, %q", err, c.NATS.Credentials)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"redis:\n  url: rediss://r:6379\n  tls: { ca_file: ca.pem }\n", "c.yaml:5: key redis.tls: ca_file: " + filepath.Join(dir, "ca.pem") + " holds no PEM certificate"},
		{"redis:\n  url: rediss://r:6379\n  tls: { cert_file: ca.pem }\n", "key redis.tls: cert_file needs key_file beside it"},
		{"redis:\n  tls: { ca_file: ca.pem }\n", "key redis.tls: for the Redis that redis.url, redis.addrs or redis.sentinel names"},
		{"nats:\n  credentials: user.creds\n", "c.yaml:4: key nats.credentials: for the servers nats.url names"},
		{"  - url: https://b2:8443\n    tls: { ca_file: ca.pem }\n", "c.yaml:4: key backends[1].tls: ca_file: " + filepath.Join(dir, "ca.pem") + " holds no PEM certificate"},
		{"    tls: { ca_file: ca.pem }\n", "c.yaml:3: key backends[0].tls: for an https:// backend; this one is not"},
		{"webhooks:\n  - url: http://h/x\n    tls: { cert_file: ca.pem }\n", "c.yaml:5: key webhooks[0].tls: for an https:// url; this one is not"},
		{"nats:\n  url: nats://n:4222\n  credentials: nobody.creds\n", "key nats.credentials: cannot read " + filepath.Join(dir, "nobody.creds")},
		{"nats:\n  url: nats://n:4222\n  credentials: ca.pem\n", "c.yaml:5: key nats.credentials: " + filepath.Join(dir, "ca.pem") + " holds no NATS user JWT and NKey seed"},
		{"nats:\n  url: nats://n:4222\n  credentials: damaged.creds\n", "c.yaml:5: key nats.credentials: " + filepath.Join(dir, "damaged.creds") + ": its user JWT is not a valid NATS user JWT"},
	} {
		write(minimal + tc.yaml)
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

// TestAuthOffUnsaid: a config without api_keys serves every client; unless
// it says so (auth.enabled: false) or loads scripts (an on_auth hook may be
// its check), it most likely forgot its keys.
func TestAuthOffUnsaid(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want bool
	}{
		{minimal, true},
		{minimal + "auth: { enabled: false }\n", false},
		{minimal + "api_keys: [{key: sk-test-123456789}]\n", false},
		{minimal + "auth: { storage: redis }\nredis: { url: \"redis://r:6379\" }\n", false},
	} {
		c, err := Parse([]byte(tc.yaml), "c.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if got := c.AuthOffUnsaid(); got != tc.want {
			t.Errorf("%q: AuthOffUnsaid = %v, want %v", tc.yaml, got, tc.want)
		}
	}
}
