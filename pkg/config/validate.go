package config

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/redis/go-redis/v9"
)

// Allowed values of the enumerated keys.
var (
	Strategies    = []string{"round_robin", "weighted", "least_connections", "latency_based", "least_load"}
	AuthStorages  = []string{"file", "redis"}
	RateStorages  = []string{"memory", "redis"}
	ResetPeriods  = []string{"daily", "weekly", "monthly", "never"}
	KeyStatuses   = []string{"active", "disabled"}
	LogLevels     = []string{"debug", "info", "warn", "error"}
	natsSchemes   = []string{"nats", "tls"}
	redisSchemes  = []string{"redis", "rediss"}
	pgSchemes     = []string{"postgres", "postgresql"}
	endpointName  = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	sha256Hex     = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	needRedisText = `"redis" needs redis.url (or redis.addrs, or redis.sentinel) to say where Redis is`
)

// MinLeaseTTL is the shortest rate_limit.lease_ttl accepted.
const MinLeaseTTL = time.Second

// Validate checks a config whose defaults are filled in (Load and Parse do
// both) and returns every problem as a *Errors, each naming the key path,
// the reason and, for a config read from a file, the line; nil when the
// config is sound. Empty enumerated values count as their defaults.
func (c *Config) Validate() error {
	file := ""
	if c.src != nil {
		file = c.src.file
	}
	return c.validate().err(file)
}

// FindBackend returns the index of the backend that ref names, by name or
// by URL (a trailing slash does not matter).
func (c *Config) FindBackend(ref string) (int, bool) {
	for i, b := range c.Backends {
		if ref != "" && (ref == b.Name || sameURL(ref, b.URL)) {
			return i, true
		}
	}
	return -1, false
}

func sameURL(a, b string) bool {
	return strings.TrimSuffix(a, "/") == strings.TrimSuffix(b, "/")
}

type checker struct {
	c    *Config
	errs *Errors
}

func (v *checker) add(path, format string, args ...any) {
	v.errs.add(v.c.line(path), path, format, args...)
}

func (c *Config) validate() *Errors {
	v := &checker{c: c, errs: &Errors{}}
	v.listener("listen", c.Listen)
	v.nats()
	v.redis()
	if c.Admin.Listen != "" {
		v.listener("admin.listen", c.Admin.Listen)
		if c.Admin.Token == "" {
			v.add("admin.token", "the admin API needs a token when admin.listen is set")
		}
	}
	v.listenersApart()
	v.sentSecret("admin.token", "token", c.Admin.Token)
	for i, p := range c.TrustedProxies {
		v.prefix(fmt.Sprintf("trusted_proxies[%d]", i), p)
	}
	v.server()
	v.backends()
	v.usageHook()
	v.webhooks()
	v.healthCheck()
	v.routing()
	v.auth()
	v.apiKeys()
	v.rateLimit()
	v.lua()
	v.logging()
	return v.errs
}

func (v *checker) listener(path, addr string) {
	if addr == "" {
		return
	}
	if err := CheckAddr(addr); err != nil {
		v.add(path, "%s", err)
	}
}

// CheckAddr reports whether addr is a listener's address, host:port.
func CheckAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err == nil {
		if n, perr := strconv.Atoi(port); perr == nil && n >= 0 && n <= 65535 {
			// A host of digits and dots is an IPv4 address or no
			// host at all (256.1.1.1 would fail only at start).
			if strings.Trim(host, "0123456789.") == "" && host != "" {
				if _, perr := netip.ParseAddr(host); perr != nil {
					return fmt.Errorf("%q is not an IPv4 address (want host:port such as :8000 or 127.0.0.1:8000)", host)
				}
			}
			return nil
		}
	}
	return fmt.Errorf("want host:port such as :8000 or 127.0.0.1:8000, got %q", addr)
}

// SameAddr reports whether listeners on the addresses a and b (host:port)
// would take the same port: the same port, other than 0, on the same host
// or with either on every address ("", 0.0.0.0, ::).
func SameAddr(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	na, err3 := strconv.Atoi(pa)
	nb, err4 := strconv.Atoi(pb)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || na != nb || na == 0 {
		return false
	}
	// The host as the listener takes it: "localhost" is the loopback
	// address, and an address is compared by value (::ffff:127.0.0.1 is
	// 127.0.0.1).
	host := func(h string) string {
		if strings.EqualFold(h, "localhost") {
			return "127.0.0.1"
		}
		if ip, err := netip.ParseAddr(h); err == nil {
			return ip.Unmap().String()
		}
		return strings.ToLower(h)
	}
	any := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	ha, hb = host(ha), host(hb)
	return any(ha) || any(hb) || ha == hb
}

// listenersApart reports the listeners of the file that would take the
// same port: the process would fail to start, having begun to.
func (v *checker) listenersApart() {
	addrs := []struct{ path, addr string }{
		{"listen", v.c.Listen}, {"admin.listen", v.c.Admin.Listen}, {"nats.embedded_listen", v.c.NATS.EmbeddedListen},
	}
	for i, a := range addrs {
		for _, b := range addrs[:i] {
			if a.addr != "" && b.addr != "" && SameAddr(a.addr, b.addr) {
				v.add(a.path, "%q takes the port of %s (%q): give each listener its own", a.addr, b.path, b.addr)
			}
		}
	}
}

func (v *checker) nats() {
	n := v.c.NATS
	if n.URL != "" {
		for part := range strings.SplitSeq(n.URL, ",") {
			v.url("nats.url", strings.TrimSpace(part), natsSchemes,
				"want nats://host:port or tls://host:port (a comma-separated list for a cluster)")
		}
	}
	v.listener("nats.embedded_listen", n.EmbeddedListen)
	if n.URL == "" && n.Credentials != "" {
		v.add("nats.credentials", "for the servers nats.url names; the embedded server needs none")
	}
	if n.URL == "" && n.TLS.IsSet() {
		v.add("nats.tls", "for the servers nats.url names; the embedded server needs none")
	}
	if n.Credentials != "" {
		b, err := os.ReadFile(n.Credentials)
		switch {
		case err != nil:
			v.add("nats.credentials", "cannot read %s: %v", n.Credentials, unwrapPathError(err))
		case !bytes.Contains(b, []byte("-----BEGIN NATS USER JWT-----")) || !bytes.Contains(b, []byte("NKEY SEED-----")):
			// As nsc writes it: the user's JWT, then its NKey seed.
			v.add("nats.credentials", "%s holds no NATS user JWT and NKey seed (a .creds file as nsc writes it)", n.Credentials)
		default:
			// What the NATS client reads of it when it connects, read
			// now: a damaged file fails here, not at every connection.
			if tok, err := jwt.ParseDecoratedJWT(b); err != nil {
				v.add("nats.credentials", "%s: its user JWT cannot be read: %v", n.Credentials, err)
			} else if _, err := jwt.DecodeUserClaims(tok); err != nil {
				v.add("nats.credentials", "%s: its user JWT is not a valid NATS user JWT: %v", n.Credentials, err)
			}
			if _, err := jwt.ParseDecoratedUserNKey(b); err != nil {
				v.add("nats.credentials", "%s: its NKey seed is not a valid user seed: %v", n.Credentials, err)
			}
		}
	}
	v.tls("nats.tls", n.TLS)
	if r := n.Stream.Replicas; r < 1 || r > 5 {
		v.add("nats.stream.replicas", "want 1 to 5 (JetStream's limit), got %d", r)
	}
	if a := n.Stream.MaxAge.D(); a > 0 && a < MinStreamMaxAge {
		v.add("nats.stream.max_age", "want at least %s (the stream's duplicate window, which JetStream wants no longer than its "+
			"max age), got %s", MinStreamMaxAge, a)
	}
}

// MinStreamMaxAge is the least nats.stream.max_age: the LLMPROXY stream's
// duplicate window (events.StreamOptions.DuplicateWindow's least).
const MinStreamMaxAge = 2 * time.Minute

// tls checks the files of the TLS settings at path.
func (v *checker) tls(path string, t TLS) {
	if !t.IsSet() {
		return
	}
	if _, err := t.Load(); err != nil {
		v.add(path, "%v", err)
	}
}

func (v *checker) redis() {
	r := v.c.Redis
	if !r.Enabled() && r.TLS.IsSet() {
		v.add("redis.tls", "for the Redis that redis.url, redis.addrs or redis.sentinel names; there is none")
	}
	if !r.Enabled() && r.Username != "" {
		v.add("redis.username", "for the Redis that redis.url, redis.addrs or redis.sentinel names; there is none")
	}
	if !r.Enabled() && r.Password != "" {
		// Not shown: the value is the password.
		v.add("redis.password", "for the Redis that redis.url, redis.addrs or redis.sentinel names; there is none")
	}
	v.tls("redis.tls", r.TLS)
	if r.URL != "" {
		n := len(v.errs.List)
		v.url("redis.url", r.URL, redisSchemes, "want redis://host:port or rediss://host:port")
		if len(v.errs.List) == n {
			// What the Redis client refuses at start (a database that is
			// not a number, an option it does not know, …). Its messages
			// name the option and the bad value, never the user info.
			if _, err := redis.ParseURL(r.URL); err != nil {
				v.add("redis.url", "%s", strings.TrimPrefix(err.Error(), "redis: "))
			}
		}
		if len(r.Addrs) > 0 {
			v.add("redis.addrs", "set redis.url or redis.addrs (a cluster), not both")
		}
	}
	v.hostPorts("redis.addrs", r.Addrs, "redis.password")
	s := r.Sentinel
	switch {
	case s.MasterName == "" && (len(s.Addrs) > 0 || s.Username != "" || s.Password != "" || s.DB != 0):
		v.add("redis.sentinel", "needs master_name, the name of the master the sentinels watch")
	case s.MasterName != "" && len(s.Addrs) == 0:
		v.add("redis.sentinel.addrs", "list the sentinels (host:port) that watch master %q", s.MasterName)
	case s.MasterName != "" && (r.URL != "" || len(r.Addrs) > 0):
		v.add("redis.sentinel", "set redis.url, redis.addrs (a cluster) or redis.sentinel, one of them")
	}
	v.hostPorts("redis.sentinel.addrs", s.Addrs, "redis.sentinel.password")
	if s.DB < 0 {
		v.add("redis.sentinel.db", "want a database number, 0 or more, got %d", s.DB)
	}
	switch {
	case r.WaitReplicas < 0:
		v.add("redis.wait_replicas", "want a number of replicas, 0 or more, got %d", r.WaitReplicas)
	case r.WaitReplicas > 0 && len(r.Addrs) > 0:
		v.add("redis.wait_replicas", "is for a single Redis or redis.sentinel's master, not a Redis Cluster (redis.addrs), whose writes span nodes")
	case r.WaitReplicas > 0 && !r.Enabled():
		v.add("redis.wait_replicas", "for the Redis that redis.url or redis.sentinel names; there is none")
	}
}

// hostPorts checks a list of host:port addresses at path; a password goes
// in passwordKey, not in an address.
func (v *checker) hostPorts(path string, addrs []string, passwordKey string) {
	for i, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		switch _, perr := strconv.Atoi(port); {
		case strings.Contains(a, "@"):
			// Not shown: what comes before the @ is a password.
			v.add(fmt.Sprintf("%s[%d]", path, i), "want host:port; a password goes in %s", passwordKey)
		case err != nil || perr != nil || host == "":
			v.add(fmt.Sprintf("%s[%d]", path, i), "want host:port, got %q", a)
		}
	}
}

func (v *checker) server() {
	s := v.c.Server
	// A size past MaxLimit would overflow where the gateway reads one
	// byte past it (a chunked body) and the embedded NATS server adds
	// captures to it: every such request would be refused.
	v.limit("server.max_body_bytes", s.MaxBodyBytes)
}

func (v *checker) backends() {
	c := v.c
	if len(c.Backends) == 0 {
		v.add("backends", "at least one backend is required (a list of {url: http://host:port})")
		return
	}
	names := map[string]int{}
	urls := map[string]int{}
	anyWeight, negWeight := false, false // a negative weight has its own error
	for i, b := range c.Backends {
		p := fmt.Sprintf("backends[%d]", i)
		if b.URL == "" {
			v.add(p+".url", "every backend needs a url such as http://vllm:8000")
		} else {
			v.httpURL(p+".url", b.URL)
			if u, err := url.Parse(b.URL); err == nil {
				if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
					// Not shown: a query is where a key would be.
					v.add(p+".url", "want no query or fragment: requests keep the client's query, so this one would never be sent, "+
						"and the url names the backend in events, metrics and /readyz; give credentials in headers")
				}
				if sdkBaseURL(u.Path) {
					// The base URL an OpenAI SDK takes, or an endpoint's
					// URL: the client's path already starts with /v1.
					v.add(p+".url", "holds /v1, which the client's path (/v1/chat/completions) already starts with: the backend "+
						"would be asked /v1/v1/chat/completions; give the engine's root, such as http://vllm:8000")
				}
			}
			if j, dup := urls[strings.TrimSuffix(b.URL, "/")]; dup {
				v.add(p+".url", "backends[%d] has the same url; give each backend its own url", j)
			}
			urls[strings.TrimSuffix(b.URL, "/")] = i
		}
		// A backend without a name is named by its url: that name may
		// clash with another's too (two same urls are reported above).
		if j, dup := names[b.Name]; dup && b.Name != "" {
			switch other := c.Backends[j]; {
			case b.Name != b.URL:
				v.add(p+".name", "duplicate backend name %q (also backends[%d])", b.Name, j)
			case other.Name != other.URL:
				v.add(p+".url", "backends[%d] is named %q, this backend's url, which names it when it has no name; give one of them another name", j, b.Name)
			}
		}
		if _, dup := names[b.Name]; !dup {
			names[b.Name] = i
		}
		if b.Weight < 0 {
			v.add(p+".weight", "must not be negative, got %d", b.Weight)
		}
		if b.TLS.IsSet() && !strings.HasPrefix(strings.ToLower(b.URL), "https://") {
			v.add(p+".tls", "for an https:// backend; this one is not")
		}
		v.tls(p+".tls", b.TLS)
		anyWeight = anyWeight || b.Weight > 0
		negWeight = negWeight || b.Weight < 0
		for j, m := range b.Models {
			if strings.TrimSpace(m) == "" {
				v.add(fmt.Sprintf("%s.models[%d]", p, j), "empty model name")
			}
		}
		seen := map[string]string{}
		for _, h := range slices.Sorted(maps.Keys(b.Headers)) {
			val := b.Headers[h]
			first, dup := seen[strings.ToLower(h)]
			seen[strings.ToLower(h)] = h
			switch {
			case dup:
				// Header names are the same in any case: which value
				// went out would change from request to request.
				v.add(p+".headers."+h, "the same header as %q (header names are not case-sensitive); give it once", first)
			case !validHeaderName(h):
				v.add(p+".headers."+h, "not a valid HTTP header name")
			case strings.EqualFold(h, "Host") && !validHostValue(val):
				v.add(p+".headers."+h, "not a host (a name or address, with an optional :port): %q", val)
			case framingHeader(h):
				// net/http writes these from the request itself and
				// drops them from the headers: set, they would do
				// nothing.
				v.add(p+".headers."+h, "the gateway frames each request itself; this header cannot be set")
			case !validHeaderValue(val):
				// Not shown: the value is a credential. An https backend
				// would refuse every request, an http one get the value
				// with the line break made a space.
				v.add(p+".headers."+h, "the value has a line break or another control character, which a header cannot carry "+
					"(a variable read from a file may end with a newline)")
			}
		}
	}
	if !anyWeight {
		if !negWeight {
			v.add("backends", "every backend has weight 0; at least one needs a weight above 0 to get traffic")
		}
		return
	}
	// A backend with weight 0 is a standby, reached only through the
	// fallback chain of a backend that serves the same model and has a
	// weight: a model only standbys list would never be served.
	for i, b := range c.Backends {
		if b.Weight != 0 {
			continue
		}
		for j, m := range b.Models {
			if !c.weightedServes(m) {
				v.add(fmt.Sprintf("backends[%d].models[%d]", i, j), "%q is served only by backends with weight 0, which take no traffic of their own "+
					"(routing.fallback reaches them from a backend with a weight serving the same model), so every request for it would fail; "+
					"give this backend a weight, or list the model on a backend that has one", m)
			}
		}
	}
}

// shareModel reports whether a and b serve a model in common (one that
// lists no models serves them all).
func shareModel(a, b Backend) bool {
	if len(a.Models) == 0 || len(b.Models) == 0 {
		return true
	}
	return slices.ContainsFunc(a.Models, func(m string) bool {
		return slices.ContainsFunc(b.Models, func(n string) bool { return ModelKey(n) == ModelKey(m) })
	})
}

// weightedServes reports whether a backend with a weight serves model m
// (lists it, or lists no models).
func (c *Config) weightedServes(m string) bool {
	for _, b := range c.Backends {
		if b.Weight > 0 && (len(b.Models) == 0 || slices.ContainsFunc(b.Models, func(n string) bool { return ModelKey(n) == ModelKey(m) })) {
			return true
		}
	}
	return false
}

func (v *checker) usageHook() {
	u := v.c.UsageHook
	if u.URL != "" {
		v.httpURL("usage_hook.url", u.URL)
	} else if u.Enabled != nil && *u.Enabled {
		v.add("usage_hook.enabled", "the usage hook is enabled but has no url")
	}
	v.nonNegative("usage_hook.retry", int64(u.Retry))
	v.webhookSecret("usage_hook.secret", u.Secret)
}

// sentSecret rejects a secret a client sends in a header (admin.token, an
// API key) that no request could send: the gateway reads the header's
// value trimmed, and a header cannot hold a line break or another control
// character, so a secret with any of them would match nothing. what names
// it in the message ("token", "key").
func (v *checker) sentSecret(path, what, secret string) {
	if secret != strings.TrimSpace(secret) || !validHeaderValue(secret) {
		// Not shown: the value is the secret.
		v.add(path, "the %s has a line break, another control character or spaces around it, so no request could "+
			"send it (a variable read from a file may end with a newline)", what)
	}
}

// webhookSecret rejects a secret with whitespace around it. The secret is
// the HMAC key byte for byte: one that ends in the newline of the file a
// ${VAR} was read from signs with that newline, a receiver that reads the
// secret trimmed (as most do) rejects every delivery, and every event ends
// in the DLQ. Trimming it here instead would break, silently, the receiver
// that kept the newline too; an error at start names the key.
func (v *checker) webhookSecret(path, secret string) {
	if secret != strings.TrimSpace(secret) {
		// Not shown: the value is the secret.
		v.add(path, "the secret has a line break or spaces around it, which would be part of the HMAC key: a receiver "+
			"that holds the secret without them rejects every delivery (a variable read from a file may end with a newline)")
	}
}

func (v *checker) webhooks() {
	names := map[string]int{}
	for i, w := range v.c.Webhooks {
		p := fmt.Sprintf("webhooks[%d]", i)
		if w.URL == "" {
			v.add(p+".url", "every webhook needs a url")
		} else {
			v.httpURL(p+".url", w.URL)
		}
		switch j, dup := names[w.Name]; {
		case w.Name == UsageHookName:
			v.add(p+".name", "%q is the usage hook's name; choose another", w.Name)
		case !endpointName.MatchString(w.Name):
			v.add(p+".name", "want letters, digits, '-' or '_' (it names a durable consumer), got %q", w.Name)
		case len(w.Name) > MaxWebhookName:
			v.add(p+".name", "want at most %d characters (it names a durable consumer), got %d", MaxWebhookName, len(w.Name))
		case dup:
			v.add(p+".name", "duplicate webhook name %q (also webhooks[%d])", w.Name, j)
		}
		names[w.Name] = i
		if w.MaxAttempts < 1 {
			v.add(p+".max_attempts", "want at least 1, got %d", w.MaxAttempts)
		}
		if w.BackoffMax.D() < time.Second {
			v.add(p+".backoff_max", "want at least 1s (the first retry waits up to 1s), got %s", w.BackoffMax.D())
		}
		v.webhookSecret(p+".secret", w.Secret)
		v.receiverTLS(p+".tls", w.URL, w.TLS)
	}
	v.receiverTLS("usage_hook.tls", v.c.UsageHook.URL, v.c.UsageHook.TLS)
}

// receiverTLS checks the TLS files at path, of a receiver at url.
func (v *checker) receiverTLS(path, url string, t TLS) {
	if t.IsSet() && !strings.HasPrefix(strings.ToLower(url), "https://") {
		v.add(path, "for an https:// url; this one is not")
	}
	v.tls(path, t)
}

func (v *checker) healthCheck() {
	h := v.c.HealthCheck
	// Enabled by default because some backend has its own path, checks
	// leave the backends without one alone; written enabled: true asks
	// for every backend to be checked.
	asked := h.IsEnabled() && (v.c.src == nil || v.c.given("health_check.enabled"))
	if h.IsEnabled() && h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		v.add("health_check.path", "want a path starting with /, such as /health, got %q", h.Path)
	} else if asked && h.Path == "" {
		for i, b := range v.c.Backends {
			if b.HealthCheckPath == "" {
				v.add("health_check.path", "enabled health checks need a path starting with /, such as /health (or a health_check_path on backends[%d])", i)
				break
			}
		}
	}
	for i, b := range v.c.Backends {
		if b.HealthCheckPath != "" && !strings.HasPrefix(b.HealthCheckPath, "/") {
			v.add(fmt.Sprintf("backends[%d].health_check_path", i), "want a path starting with /, such as /health, got %q", b.HealthCheckPath)
		}
	}
	v.positive("health_check.healthy_threshold", int64(h.HealthyThreshold))
	v.positive("health_check.unhealthy_threshold", int64(h.UnhealthyThreshold))
	v.positive("health_check.failure_threshold", int64(h.FailureThreshold))
}

func (v *checker) routing() {
	r := v.c.Routing
	v.oneOf("routing.load_balance_strategy", r.LoadBalanceStrategy, Strategies)
	rt := r.Retry
	if v.c.src != nil && !v.c.given("routing.retry.enabled") {
		// max_retries: 0 agrees with retries off; anything else asks for
		// retries that would never happen.
		for _, k := range []string{"max_retries", "initial_wait", "max_wait", "multiplier", "on"} {
			if v.c.given("routing.retry."+k) && (k != "max_retries" || rt.MaxRetries > 0) {
				v.add("routing.retry."+k, "retries are off unless routing.retry.enabled is true; write enabled: true (or enabled: false to keep them off)")
				break
			}
		}
	}
	v.nonNegative("routing.retry.max_retries", int64(rt.MaxRetries))
	if rt.Multiplier < 1 {
		v.add("routing.retry.multiplier", "want at least 1 (the wait grows by this factor), got %g", rt.Multiplier)
	}
	if rt.MaxWait > 0 && rt.InitialWait > rt.MaxWait {
		v.add("routing.retry.initial_wait", "is longer than max_wait (%s > %s)",
			time.Duration(rt.InitialWait), time.Duration(rt.MaxWait))
	}
	if rt.On != nil && len(rt.On) == 0 {
		v.add("routing.retry.on", "an empty list would retry nothing; leave on out to retry on all of %s, or write enabled: false",
			strings.Join(RetryOn, ", "))
	}
	for i, on := range rt.On {
		v.oneOf(fmt.Sprintf("routing.retry.on[%d]", i), on, RetryOn)
	}
	primaries := map[int]int{}
	for i, f := range r.Fallback {
		p := fmt.Sprintf("routing.fallback[%d]", i)
		pi, ok := v.c.FindBackend(f.Primary)
		switch {
		case f.Primary == "":
			v.add(p+".primary", "name the backend (by url or name) whose traffic falls back")
		case !ok:
			v.add(p+".primary", "%q names no configured backend (give its url or name)", f.Primary)
		default:
			if j, dup := primaries[pi]; dup {
				v.add(p+".primary", "routing.fallback[%d] already has this primary", j)
			}
			primaries[pi] = i
		}
		if len(f.Fallback) == 0 {
			v.add(p+".fallback", "list at least one backend to fall back to")
		}
		for j, name := range f.Fallback {
			fi, ok := v.c.FindBackend(name)
			switch {
			case !ok:
				v.add(fmt.Sprintf("%s.fallback[%d]", p, j), "%q names no configured backend (give its url or name)", name)
			case fi == pi:
				v.add(fmt.Sprintf("%s.fallback[%d]", p, j), "a backend cannot be its own fallback")
			case ok && pi >= 0 && !shareModel(v.c.Backends[pi], v.c.Backends[fi]):
				// A standby is tried only for a model it serves: this
				// one would never take the primary's traffic.
				v.add(fmt.Sprintf("%s.fallback[%d]", p, j), "%q serves none of the primary's models %v (its models: %v), so it would never take the primary's requests",
					name, v.c.Backends[pi].Models, v.c.Backends[fi].Models)
			}
		}
	}
}

func (v *checker) auth() {
	a := v.c.Auth
	v.oneOf("auth.storage", a.Storage, AuthStorages)
	if a.Storage == "redis" && !v.c.Redis.Enabled() {
		v.add("auth.storage", "%s", needRedisText)
	}
	v.oneOf("auth.defaults.quota_reset_period", a.Defaults.QuotaResetPeriod, ResetPeriods)
	v.limit("auth.defaults.total_quota", a.Defaults.TotalQuota)
	v.limit("auth.defaults.max_tokens_cap", a.Defaults.MaxTokensCap)
	v.limit("auth.defaults.image_tokens", a.Defaults.ImageTokens)
	if a.Storage != "redis" && v.c.AuthEnabled() && len(v.c.APIKeys) == 0 {
		v.add("auth.enabled", "auth is enabled with file storage but api_keys lists no key, so every request would be refused")
	}
	if a.Storage == "redis" && len(v.c.APIKeys) > 0 {
		v.add("api_keys", `keys listed here are not used when auth.storage is "redis"; add them with llmproxy keys create`)
	}
}

func (v *checker) apiKeys() {
	hashes := map[string]int{}
	ids := map[string]int{}
	for i, k := range v.c.APIKeys {
		p := fmt.Sprintf("api_keys[%d]", i)
		switch {
		case k.Key != "" && k.KeySHA256 != "":
			v.add(p+".key_sha256", "give key or key_sha256, not both")
		case k.Key == "" && k.KeySHA256 == "":
			v.add(p+".key", "every key needs key (the secret) or key_sha256 (its hex SHA-256)")
		case k.KeySHA256 != "" && !sha256Hex.MatchString(k.KeySHA256):
			v.add(p+".key_sha256", "want 64 hex digits (a SHA-256)")
		default:
			h := k.Hash()
			if j, dup := hashes[h]; dup {
				field := ".key"
				if k.Key == "" {
					field = ".key_sha256"
				}
				v.add(p+field, "same secret as api_keys[%d]", j)
				break
			}
			hashes[h] = i
			id := k.PublicID()
			if j, dup := ids[id]; dup {
				v.add(p+".id", "duplicate key id %q (also api_keys[%d])", id, j)
			}
			ids[id] = i
		}
		if k.ID != "" && !KeyIDPattern.MatchString(k.ID) {
			v.add(p+".id", "want %s, got %q", KeyIDRule, k.ID)
		} else if ReservedKeyID(k.ID) {
			v.add(p+".id", "%q is the id the gateway gives requests without a key of their own; choose another", k.ID)
		}
		v.sentSecret(p+".key", "key", k.Key)
		v.oneOf(p+".status", k.Status, KeyStatuses)
		// A value the key takes from auth.defaults is reported there,
		// once, not again for every key.
		if k.TotalQuota != nil && (v.c.given(p+".total_quota") || v.c.src == nil) {
			v.limit(p+".total_quota", *k.TotalQuota)
		}
		if v.c.given(p+".quota_reset_period") || v.c.src == nil {
			v.oneOf(p+".quota_reset_period", k.QuotaResetPeriod, ResetPeriods)
		}
		for j, ip := range k.AllowedIPs {
			v.prefix(fmt.Sprintf("%s.allowed_ips[%d]", p, j), ip)
		}
		for j, m := range k.AllowedModels {
			if strings.TrimSpace(m) == "" {
				v.add(fmt.Sprintf("%s.allowed_models[%d]", p, j), "empty model name")
			}
		}
		if k.ExpiresAt != "" {
			if _, err := time.Parse(time.RFC3339, k.ExpiresAt); err != nil {
				v.add(p+".expires_at", "want an RFC 3339 time such as 2026-12-31T23:59:59Z, got %q", k.ExpiresAt)
			}
		}
		if k.Limits != nil {
			v.limits(p+".limits", *k.Limits)
		}
	}
}

func (v *checker) rateLimit() {
	r := v.c.RateLimit
	v.oneOf("rate_limit.storage", r.Storage, RateStorages)
	if r.Storage == "redis" && !v.c.Redis.Enabled() {
		v.add("rate_limit.storage", "%s", needRedisText)
	}
	g := r.Global
	if g.RequestsPerSecond < 0 {
		v.add("rate_limit.global.requests_per_second", "must not be negative, got %g", g.RequestsPerSecond)
	} else if g.Enabled != nil && *g.Enabled && g.RequestsPerSecond == 0 {
		v.add("rate_limit.global.requests_per_second", "the global limit is enabled but has no rate")
	}
	v.nonNegative("rate_limit.global.burst_size", int64(g.BurstSize))
	if g.BurstSize > 0 && g.RequestsPerSecond == 0 {
		v.add("rate_limit.global.burst_size", "a burst of the global limit, which has no rate (requests_per_second); it would do nothing")
	}
	v.limits("rate_limit.per_key", r.PerKey)
	// Every request in flight renews its lease each lease_ttl/2: below a
	// second (2ms written for 2m, say) that is a ledger round trip every
	// millisecond or less per request, and a lease that lapses between two.
	if r.LeaseTTL > 0 && r.LeaseTTL.D() < MinLeaseTTL {
		v.add("rate_limit.lease_ttl", "want at least %s (requests renew their lease every lease_ttl/2), got %s", MinLeaseTTL, r.LeaseTTL.D())
	}
}

func (v *checker) limits(p string, l PerKeyLimits) {
	if l.RequestsPerSecond < 0 {
		v.add(p+".requests_per_second", "must not be negative, got %g", l.RequestsPerSecond)
	}
	v.limit(p+".requests_per_minute", l.RequestsPerMinute)
	v.limit(p+".tokens_per_minute", l.TokensPerMinute)
	v.limit(p+".max_concurrent", l.MaxConcurrent)
}

func (v *checker) lua() {
	for i, s := range v.c.Lua.Scripts {
		p := fmt.Sprintf("lua.scripts[%d]", i)
		if s == "" {
			v.add(p, "empty script path")
			continue
		}
		fi, err := os.Stat(s)
		switch {
		case err != nil:
			v.add(p, "cannot read script %s: %v", s, unwrapPathError(err))
		case !fi.Mode().IsRegular():
			v.add(p, "%s is not a regular file", s)
		}
	}
}

func (v *checker) logging() {
	l := v.c.Logging
	v.oneOf("logging.level", l.Level, LogLevels)
	v.limit("logging.max_capture_bytes", int64(l.MaxCaptureBytes))
	v.limit("logging.refusal_events_per_second", int64(l.RefusalEvents))
	for i, r := range l.Redact {
		p := fmt.Sprintf("logging.redact[%d]", i)
		switch {
		case strings.TrimSpace(r) == "":
			v.add(p, "empty pattern")
		case strings.HasPrefix(r, "$"):
			// A JSON path: the gateway compiles it, and `llmproxy config
			// check` and `serve` check it through the gateway (see
			// Problem), since this package cannot import a service.
		default:
			if _, err := regexp.Compile(r); err != nil {
				v.add(p, "not a JSON path ($…) nor a valid regular expression: %v", err)
			}
		}
	}
	if l.Postgres.URL != "" {
		v.url("logging.postgres.url", l.Postgres.URL, pgSchemes, "want postgres://user@host:5432/db")
	}
}

// oneOf checks an enumerated value; empty means the default and passes.
func (v *checker) oneOf(path, val string, allowed []string) {
	if val != "" && !slices.Contains(allowed, val) {
		v.add(path, "want one of %s, got %q", strings.Join(allowed, ", "), val)
	}
}

func (v *checker) nonNegative(path string, n int64) {
	if n < 0 {
		v.add(path, "must not be negative, got %d", n)
	}
}

// limit checks a quota, a token or request limit or a count: 0 or more,
// and at most MaxLimit.
func (v *checker) limit(path string, n int64) {
	switch {
	case n < 0:
		v.add(path, "must not be negative, got %d", n)
	case n > MaxLimit:
		v.add(path, "at most %d (2^53), got %d", int64(MaxLimit), n)
	}
}

func (v *checker) positive(path string, n int64) {
	if n < 1 {
		v.add(path, "want at least 1, got %d", n)
	}
}

func (v *checker) httpURL(path, raw string) {
	v.url(path, raw, []string{"http", "https"}, "want an absolute http:// or https:// URL")
}

// url checks that raw is an absolute URL with a host and one of schemes.
// The message shows the URL as shownURL does.
func (v *checker) url(path, raw string, schemes []string, want string) {
	u, err := url.Parse(raw)
	if err != nil {
		v.add(path, "%s; cannot parse it", want)
		return
	}
	if !slices.Contains(schemes, strings.ToLower(u.Scheme)) || u.Host == "" || u.Hostname() == "" {
		v.add(path, "%s, got %q", want, shownURL(u))
		return
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			v.add(path, "port %s is not 1 to 65535, in %q", p, shownURL(u))
		}
	}
}

// shownURL is u as an error message may show it: its scheme and host, what
// is wrong with a URL, with user info as xxxxx (a password, and a token,
// which NATS takes as the user: url.Redacted would show that) and anything
// after the host as "/…" (a webhook's path, such as Slack's, or a query
// parameter may be its secret too). Without a scheme, the first segment of
// the path stands for the host; a keyword/value string shows its keywords.
func shownURL(u *url.URL) string {
	var b strings.Builder
	host, rest := u.Host, u.RawQuery != "" || u.Fragment != "" || u.ForceQuery
	switch {
	case u.Opaque != "": // "vllm:8000", or "user:pass@host" without "//"
		host, rest = hostPart(u.Opaque, rest)
		if !strings.Contains(host, "@") {
			// Else the "scheme" is the user's name.
			b.WriteString(u.Scheme + ":")
		}
	case u.Scheme != "" || u.Host != "":
		b.WriteString(u.Scheme + "://")
		rest = rest || u.Path != "" && u.Path != "/"
	default:
		if i := strings.IndexAny(u.Path, "= \t"); i >= 0 && !strings.Contains(u.Path[:i], "/") {
			// A keyword/value string (host=db user=app password=…), which
			// libpq takes: its keywords alone, no value.
			return keywordsOnly(u.Path)
		}
		host, rest = hostPart(u.Path, rest)
	}
	if u.User != nil || strings.Contains(host, "@") {
		b.WriteString("xxxxx@")
		host = host[strings.LastIndexByte(host, '@')+1:]
	}
	b.WriteString(host)
	if rest {
		b.WriteString("/…")
	}
	return b.String()
}

// sdkBaseURL reports whether p, a backend url's path, is an SDK's base URL
// (ending in /v1) or an endpoint's URL (/v1/chat/completions and the like),
// in any spelling: the client's path, appended, already holds /v1. A path
// with /v1 inside it that ends elsewhere (a Kubernetes service proxy's
// /api/v1/…/proxy) is a prefix of its own.
func sdkBaseURL(p string) bool {
	p = strings.ToLower(path.Clean("/" + p))
	if strings.HasSuffix(p, "/v1") {
		return true
	}
	for _, e := range []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/messages", "/v1/responses"} {
		if strings.HasSuffix(p, e) {
			return true
		}
	}
	return false
}

// keywordsOnly is s, a keyword/value string, with each value as "…". A
// value in single quotes (libpq's, which may hold spaces and '=') is
// skipped whole, backslash escapes included.
func keywordsOnly(s string) string {
	var out []string
	i := 0
	skipSpace := func() {
		for i < len(s) && isSpaceByte(s[i]) {
			i++
		}
	}
	for skipSpace(); i < len(s); skipSpace() {
		start := i
		for i < len(s) && s[i] != '=' && !isSpaceByte(s[i]) {
			i++
		}
		key := s[start:i]
		skipSpace()
		if i == len(s) || s[i] != '=' || key == "" || strings.ContainsAny(key, "'\"\\") {
			// Not keyword=value: nothing more of it is shown.
			out = append(out, "…")
			break
		}
		i++
		skipSpace()
		quoted := i < len(s) && s[i] == '\''
		if quoted {
			i++
		}
		// To the closing quote, or the next space; an escaped one (a
		// backslash before it) is the value's.
		for ; i < len(s) && (quoted && s[i] != '\'' || !quoted && !isSpaceByte(s[i])); i++ {
			if s[i] == '\\' {
				i++
			}
		}
		if quoted {
			i++
		}
		out = append(out, key+"=…")
	}
	return strings.Join(out, " ")
}

func isSpaceByte(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// hostPart returns s up to its first '/', and whether anything followed
// (or rest already).
func hostPart(s string, rest bool) (string, bool) {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i], rest || i < len(s)-1
	}
	return s, rest
}

// prefix checks a CIDR ("10.0.0.0/8", "fd00::/8") or single IP.
func (v *checker) prefix(path, s string) {
	if _, err := netip.ParsePrefix(s); err == nil {
		return
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return
	}
	v.add(path, "want a CIDR such as 10.0.0.0/8 or an IP address, got %q", s)
}

func validHeaderName(h string) bool {
	if h == "" {
		return false
	}
	for _, r := range h {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}

// validHeaderValue reports whether s may be sent as a header's value:
// no control character but tab (RFC 9110 §5.5).
func validHeaderValue(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return (r < ' ' && r != '\t') || r == 0x7f })
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// zeroKey is a key whose 0 would not mean none: left out it takes a
// default above 0, and 0 itself is no sensible value (a timeout of
// nothing, a store kept for no time, no body at all).
type zeroKey struct {
	path string
	val  func() any // the value at path, read before and after defaults
}

// zeroKeys lists the keys of c that applyDefaults fills when they are 0.
func (c *Config) zeroKeys() []zeroKey {
	d := func(p *Duration) func() any { return func() any { return time.Duration(*p) } }
	i := func(p *int) func() any { return func() any { return int64(*p) } }
	i64 := func(p *int64) func() any { return func() any { return *p } }
	keys := []zeroKey{
		{"nats.stream.max_age", d(&c.NATS.Stream.MaxAge)},
		{"nats.stream.replicas", i(&c.NATS.Stream.Replicas)},
		{"server.max_body_bytes", i64(&c.Server.MaxBodyBytes)},
		{"server.read_header_timeout", d(&c.Server.ReadHeaderTimeout)},
		{"server.body_timeout", d(&c.Server.BodyTimeout)},
		{"server.send_timeout", d(&c.Server.SendTimeout)},
		{"server.idle_timeout", d(&c.Server.IdleTimeout)},
		{"server.drain_timeout", d(&c.Server.DrainTimeout)},
		{"usage_hook.timeout", d(&c.UsageHook.Timeout)},
		{"health_check.interval", d(&c.HealthCheck.Interval)},
		{"health_check.timeout", d(&c.HealthCheck.Timeout)},
		{"health_check.healthy_threshold", i(&c.HealthCheck.HealthyThreshold)},
		{"health_check.unhealthy_threshold", i(&c.HealthCheck.UnhealthyThreshold)},
		{"health_check.failure_threshold", i(&c.HealthCheck.FailureThreshold)},
		{"health_check.cooldown", d(&c.HealthCheck.Cooldown)},
		{"routing.retry.initial_wait", d(&c.Routing.Retry.InitialWait)},
		{"routing.retry.max_wait", d(&c.Routing.Retry.MaxWait)},
		{"auth.defaults.max_tokens_cap", i64(&c.Auth.Defaults.MaxTokensCap)},
		{"rate_limit.lease_ttl", d(&c.RateLimit.LeaseTTL)},
		{"rate_limit.global.burst_size", i(&c.RateLimit.Global.BurstSize)},
		{"lua.timeout", d(&c.Lua.Timeout)},
		{"logging.max_capture_bytes", i(&c.Logging.MaxCaptureBytes)},
		{"logging.refusal_events_per_second", i(&c.Logging.RefusalEvents)},
	}
	for n := range c.Backends {
		b := &c.Backends[n]
		p := fmt.Sprintf("backends[%d].", n)
		keys = append(keys,
			zeroKey{p + "connect_timeout", d(&b.ConnectTimeout)},
			zeroKey{p + "write_timeout", d(&b.WriteTimeout)},
			zeroKey{p + "first_byte_timeout", d(&b.FirstByteTimeout)},
			zeroKey{p + "response_timeout", d(&b.ResponseTimeout)},
			zeroKey{p + "read_timeout", d(&b.ReadTimeout)})
	}
	for n := range c.Webhooks {
		w := &c.Webhooks[n]
		p := fmt.Sprintf("webhooks[%d].", n)
		keys = append(keys, zeroKey{p + "timeout", d(&w.Timeout)}, zeroKey{p + "max_age", d(&w.MaxAge)},
			zeroKey{p + "backoff_max", d(&w.BackoffMax)})
	}
	return keys
}

// writtenZeros returns the keys of zeroKeys the file sets to 0. Call it
// before applyDefaults, which would replace those zeros with defaults an
// operator who wrote 0 (meaning none, say) never asked for.
func (c *Config) writtenZeros() []zeroKey {
	var out []zeroKey
	for _, k := range c.zeroKeys() {
		switch v := k.val().(type) {
		case time.Duration:
			if v == 0 && c.given(k.path) {
				out = append(out, k)
			}
		case int64:
			if v == 0 && c.given(k.path) {
				out = append(out, k)
			}
		}
	}
	return out
}

// zeroProblems reports each of zeros (see writtenZeros), naming the
// default that leaving the key out gives; call it after applyDefaults.
func (c *Config) zeroProblems(zeros []zeroKey) *Errors {
	errs := &Errors{}
	for _, k := range zeros {
		errs.add(c.line(k.path), k.path, "want more than 0; leave the key out for the default, %v", k.val())
	}
	return errs
}

// framingHeader reports whether name is a header that frames a request or
// its connection, which backends[].headers cannot set.
func framingHeader(name string) bool {
	for _, f := range []string{"Content-Length", "Transfer-Encoding", "Trailer", "Connection", "Keep-Alive", "Te", "Upgrade", "Expect", "Proxy-Connection"} {
		if strings.EqualFold(name, f) {
			return true
		}
	}
	return false
}

// validHostValue reports whether s can be a Host header: a host name or
// address, with an optional port, without spaces or a path.
func validHostValue(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t/?#@\\") {
		return false
	}
	u, err := url.Parse("http://" + s)
	return err == nil && u.Host == s && u.Hostname() != ""
}
