package config

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"net/url"
	"strings"
	"time"
)

// Defaults that config.go documents field by field.
const (
	DefaultListen          = ":8000"
	DefaultDataDir         = "./data"
	DefaultRedisPrefix     = "llmproxy"
	DefaultStrategy        = "round_robin"
	DefaultAuthStorage     = "file"
	DefaultRateStorage     = "memory"
	DefaultResetPeriod     = "monthly"
	DefaultMaxTokensCap    = 4096
	DefaultImageTokens     = 2048
	DefaultMaxBodyBytes    = 10 << 20
	DefaultMaxCaptureBytes = 65536
	// DefaultRefusalEvents is logging.refusal_events_per_second's default.
	DefaultRefusalEvents = 10
	DefaultLogLevel      = "info"
	DefaultKeyStatus     = "active"
	// UsageHookName is the endpoint name Endpoints gives the usage hook.
	UsageHookName = "usage_hook"
)

// RetryOn is every failure class routing.retry.on may name, and its default.
var RetryOn = []string{"connect", "429", "5xx", "timeout"}

// applyDefaults fills what the file left unset with the defaults documented
// in config.go. Where zero is a meaningful value (weight, max_retries,
// usage_hook.retry) the default applies only when the key is absent from
// the file. It is idempotent.
func (c *Config) applyDefaults() {
	setStr(&c.Listen, DefaultListen)
	setStr(&c.DataDir, DefaultDataDir)
	setDur(&c.NATS.Stream.MaxAge, 168*time.Hour)
	setInt(&c.NATS.Stream.Replicas, 1)
	setStr(&c.Redis.Prefix, DefaultRedisPrefix)

	setInt(&c.Server.MaxBodyBytes, DefaultMaxBodyBytes)
	setDur(&c.Server.ReadHeaderTimeout, 10*time.Second)
	setDur(&c.Server.BodyTimeout, 60*time.Second)
	setDur(&c.Server.SendTimeout, 60*time.Second)
	setDur(&c.Server.IdleTimeout, 120*time.Second)
	setDur(&c.Server.DrainTimeout, 30*time.Second)

	for i := range c.Backends {
		b := &c.Backends[i]
		moveURLCredentials(b)
		setStr(&b.Name, b.URL)
		if b.Weight == 0 && !c.given(fmt.Sprintf("backends[%d].weight", i)) {
			b.Weight = 1
		}
		setDur(&b.ConnectTimeout, 5*time.Second)
		setDur(&b.WriteTimeout, 60*time.Second)
		setDur(&b.FirstByteTimeout, 60*time.Second)
		setDur(&b.ResponseTimeout, 10*time.Minute)
		setDur(&b.ReadTimeout, 5*time.Minute)
	}

	u := &c.UsageHook
	setDur(&u.Timeout, 5*time.Second)
	if u.Retry == 0 && !c.given("usage_hook.retry") {
		u.Retry = 2
	}
	setBool(&u.Enabled, u.URL != "")

	names := map[string]bool{UsageHookName: true}
	for _, w := range c.Webhooks {
		names[w.Name] = true
	}
	legacy := maps.Clone(names)
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		if w.Name == "" {
			w.Name = uniqueName(defaultName(w.URL), names)
			// A former name too long to name a consumer named none.
			if old := uniqueName(slug(w.URL), legacy); old != w.Name && len(old) <= maxConsumerSuffix {
				w.LegacyName = old
			}
		}
		setDur(&w.Timeout, 5*time.Second)
		if w.MaxAttempts == 0 && !c.given(fmt.Sprintf("webhooks[%d].max_attempts", i)) {
			w.MaxAttempts = 10
		}
		setDur(&w.MaxAge, 24*time.Hour)
		setDur(&w.BackoffMax, 5*time.Minute)
	}

	h := &c.HealthCheck
	anyPath := h.Path != ""
	for _, b := range c.Backends {
		anyPath = anyPath || b.HealthCheckPath != ""
	}
	setBool(&h.Enabled, anyPath)
	setDur(&h.Interval, 10*time.Second)
	setDur(&h.Timeout, 2*time.Second)
	setInt(&h.HealthyThreshold, 1)
	setInt(&h.UnhealthyThreshold, 2)
	setInt(&h.FailureThreshold, 3)
	setDur(&h.Cooldown, 10*time.Second)

	r := &c.Routing
	setStr(&r.LoadBalanceStrategy, DefaultStrategy)
	if r.Retry.MaxRetries == 0 && !c.given("routing.retry.max_retries") {
		r.Retry.MaxRetries = 2
	}
	setDur(&r.Retry.InitialWait, 100*time.Millisecond)
	setDur(&r.Retry.MaxWait, 2*time.Second)
	if r.Retry.Multiplier == 0 && !c.given("routing.retry.multiplier") {
		r.Retry.Multiplier = 2
	}
	if r.Retry.On == nil {
		r.Retry.On = append([]string(nil), RetryOn...)
	}

	a := &c.Auth
	setStr(&a.Storage, DefaultAuthStorage)
	setBool(&a.Enabled, len(c.APIKeys) > 0 || a.Storage == "redis")
	setStr(&a.Defaults.QuotaResetPeriod, DefaultResetPeriod)
	setInt(&a.Defaults.MaxTokensCap, DefaultMaxTokensCap)
	if a.Defaults.ImageTokens == 0 && !c.given("auth.defaults.image_tokens") {
		a.Defaults.ImageTokens = DefaultImageTokens
	}
	for i := range c.APIKeys {
		k := &c.APIKeys[i]
		setStr(&k.Status, DefaultKeyStatus)
		setStr(&k.QuotaResetPeriod, a.Defaults.QuotaResetPeriod)
		if k.TotalQuota == nil {
			q := a.Defaults.TotalQuota
			k.TotalQuota = &q
		}
		if k.Key != "" || k.KeySHA256 != "" {
			k.ID = k.PublicID()
		}
	}

	rl := &c.RateLimit
	setBool(&rl.Enabled, true)
	setStr(&rl.Storage, DefaultRateStorage)
	setBool(&rl.Global.Enabled, rl.Global.RequestsPerSecond > 0)
	if rl.Global.BurstSize == 0 && rl.Global.RequestsPerSecond > 0 &&
		rl.Global.RequestsPerSecond <= math.MaxInt32 {
		rl.Global.BurstSize = int(math.Ceil(rl.Global.RequestsPerSecond))
	}
	setBool(&rl.PerKey.Enabled, rl.PerKey.anySet())
	setDur(&rl.LeaseTTL, 2*time.Minute)
	for i := range c.APIKeys {
		if k := &c.APIKeys[i]; k.Limits != nil {
			l := c.keyLimits(i, *k.Limits)
			k.Limits = &l
		}
	}

	setDur(&c.Lua.Timeout, 50*time.Millisecond)
	setStr(&c.Logging.Level, DefaultLogLevel)
	setInt(&c.Logging.MaxCaptureBytes, DefaultMaxCaptureBytes)
	setInt(&c.Logging.RefusalEvents, DefaultRefusalEvents)
}

// keyLimits resolves api_keys[i].limits, as written (own), against
// rate_limit.per_key, field by field: a limit the key writes replaces
// per_key's, 0 included (no limit of that kind for this key, as `llmproxy
// keys create --tpm 0` means for a key in Redis); a limit it leaves out is
// per_key's. With per_key switched off (enabled: false) a key has only the
// limits it writes itself. The key's limits are on when it writes
// enabled: true, or leaves enabled out and ends up with any limit.
func (c *Config) keyLimits(i int, own PerKeyLimits) PerKeyLimits {
	var out PerKeyLimits
	if c.RateLimit.PerKey.IsEnabled() {
		out = c.RateLimit.PerKey
	}
	out.Enabled = own.Enabled
	p := fmt.Sprintf("api_keys[%d].limits.", i)
	if c.given(p + "requests_per_second") {
		out.RequestsPerSecond = own.RequestsPerSecond
	}
	if c.given(p + "requests_per_minute") {
		out.RequestsPerMinute = own.RequestsPerMinute
	}
	if c.given(p + "tokens_per_minute") {
		out.TokensPerMinute = own.TokensPerMinute
	}
	if c.given(p + "max_concurrent") {
		out.MaxConcurrent = own.MaxConcurrent
	}
	setBool(&out.Enabled, out.anySet())
	return out
}

// anySet reports whether any limit is set.
func (l PerKeyLimits) anySet() bool {
	return l.RequestsPerSecond > 0 || l.RequestsPerMinute > 0 || l.TokensPerMinute > 0 || l.MaxConcurrent > 0
}

// defaultName names a webhook that has no name: the slug of its URL's
// host (port included) and the first 8 hex digits of the SHA-256 of the
// whole URL, e.g. "https://hooks.slack.com/services/T0/B0/XXXX" →
// "hooks-slack-com-c1e10ad4". Nothing of the path, query, fragment or user
// info is in it: services such as Slack and Discord put the webhook's
// secret in the path, and the name goes into metrics, logs and consumer
// names. The hash keeps two endpoints on one host apart whatever their
// order in the file.
func defaultName(raw string) string {
	host := "webhook"
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		host = slug(u.Host)
	}
	// Room for the hash and uniqueName's "-N" within MaxWebhookName.
	if len(host) > MaxWebhookName-16 {
		host = strings.TrimRight(host[:MaxWebhookName-16], "-")
	}
	sum := sha256.Sum256([]byte(raw))
	return host + "-" + hex.EncodeToString(sum[:4])
}

// MaxWebhookName is the longest webhook name: it names the endpoint's
// durable consumer ("notifier-" and the name, at most 255 characters in
// NATS), its dead letters' subject and its metrics label.
const MaxWebhookName = 200

// maxConsumerSuffix is the longest name "notifier-" may precede in a NATS
// consumer name.
const maxConsumerSuffix = 255 - len("notifier-")

// slug makes a short name from a URL's host and path, e.g.
// "https://billing.internal/llm-usage" → "billing-internal-llm-usage". It
// was the default webhook name before defaultName, and still gives
// Webhook.LegacyName.
func slug(raw string) string {
	s := raw
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		s = u.Host + u.Path
	}
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			dash = false
			if b.Len() >= 48 {
				break
			}
			continue
		}
		dash = true
	}
	if b.Len() == 0 {
		return "webhook"
	}
	return b.String()
}

// moveURLCredentials takes credentials out of b's URL (http://user:pass@host)
// into its Authorization header, as HTTP Basic (what curl makes of them),
// unless the headers set one already: the URL names the backend in events,
// metrics and logs, and a request's URL carries no credentials on the wire.
func moveURLCredentials(b *Backend) {
	u, err := url.Parse(b.URL)
	if err != nil || u.User == nil {
		return
	}
	set := false
	for k := range b.Headers {
		set = set || strings.EqualFold(k, "Authorization")
	}
	if !set {
		pass, _ := u.User.Password()
		h := make(map[string]string, len(b.Headers)+1)
		for k, v := range b.Headers {
			h[k] = v
		}
		h["Authorization"] = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
		b.Headers = h
	}
	u.User = nil
	b.URL = u.String()
}

// uniqueName returns name, or name-2, name-3… when taken, and marks it taken.
func uniqueName(name string, taken map[string]bool) string {
	n := name
	for i := 2; taken[n]; i++ {
		n = fmt.Sprintf("%s-%d", name, i)
	}
	taken[n] = true
	return n
}

func setStr(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setInt[T int | int64](p *T, v T) {
	if *p == 0 {
		*p = v
	}
}

func setDur(p *Duration, v time.Duration) {
	if *p == 0 {
		*p = Duration(v)
	}
}

func setBool(p **bool, v bool) {
	if *p == nil {
		*p = &v
	}
}
