// Package config is LLMProxy's YAML schema: one file for every target. Load
// reads a file, interpolates ${ENV} into its values, rejects unknown keys and
// bad values with the line number and key path, fills defaults and
// validates.
package config

import (
	"path/filepath"
	"strings"
)

// Config is the whole configuration file. Every target reads the same file
// and uses the parts it needs.
// MaxLimit bounds quotas, token and request limits and counts (2^53): the
// ledger's sums stay exact, on Redis too, whose scripts count in doubles.
const MaxLimit = 1 << 53

type Config struct {
	// Listen is the gateway's address (default ":8000").
	Listen string `yaml:"listen"`
	// DataDir holds the embedded NATS store, the local ledger and the
	// outbox (default "./data").
	DataDir string `yaml:"data_dir"`
	NATS    NATS   `yaml:"nats"`
	Redis   Redis  `yaml:"redis"`
	Admin   Admin  `yaml:"admin"`
	// TrustedProxies are the CIDRs (or single IPs) whose X-Forwarded-For is
	// believed; from anyone else the connection's address is the client IP.
	TrustedProxies []string    `yaml:"trusted_proxies"`
	Server         Server      `yaml:"server"`
	Backends       []Backend   `yaml:"backends"`
	UsageHook      UsageHook   `yaml:"usage_hook"`
	Webhooks       []Webhook   `yaml:"webhooks"`
	HealthCheck    HealthCheck `yaml:"health_check"`
	Routing        Routing     `yaml:"routing"`
	Auth           Auth        `yaml:"auth"`
	APIKeys        []APIKey    `yaml:"api_keys"`
	RateLimit      RateLimit   `yaml:"rate_limit"`
	Lua            Lua         `yaml:"lua"`
	Logging        Logging     `yaml:"logging"`

	// src is where the config was read from (nil when built in Go); it
	// lets Validate name lines.
	src *source
}

// NATS locates the event bus.
type NATS struct {
	// URL is empty for the embedded server (target all), else nats://…;
	// a comma-separated list for a cluster.
	URL string `yaml:"url"`
	// Stream sets how the LLMPROXY stream is kept.
	Stream Stream `yaml:"stream"`
	// EmbeddedListen, when set, makes the embedded server (target all) also
	// accept clients on this address, e.g. "127.0.0.1:4333".
	EmbeddedListen string `yaml:"embedded_listen"`
	// Credentials is a NATS credentials file (a user's JWT and NKey seed,
	// as nsc writes it), for a server in operator mode.
	Credentials string `yaml:"credentials"`
	// TLS is the connection's trust and identity, for url's servers.
	TLS TLS `yaml:"tls"`
}

// TLS names the PEM files of a TLS connection. A relative path is relative
// to the config file's directory.
type TLS struct {
	// CAFile holds the CAs the server's certificate must chain to, in
	// place of the system's.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate and its key, for a
	// server that asks for one.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// IsSet reports whether t names any file.
func (t TLS) IsSet() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Stream configures the LLMPROXY stream.
type Stream struct {
	MaxAge   Duration `yaml:"max_age"`  // default 168h
	Replicas int      `yaml:"replicas"` // default 1
}

// Redis locates the shared ledger and key store.
type Redis struct {
	// URL is redis://… ; empty means the local ledger (target all).
	URL string `yaml:"url"`
	// Addrs lists Redis Cluster nodes (host:port) instead of URL.
	Addrs []string `yaml:"addrs"`
	// Sentinel names a master that Redis Sentinel watches, instead of URL
	// or Addrs: the client asks the sentinels where the master is, and
	// follows it when they fail it over.
	Sentinel Sentinel `yaml:"sentinel"`
	// Username and Password are Redis's ACL user and password, for addrs
	// or sentinel's master, or in place of those in url.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// TLS, when set, makes the connection TLS (for url or addrs) with
	// these files.
	TLS TLS `yaml:"tls"`
	// Prefix is put before every key (default "llmproxy").
	Prefix string `yaml:"prefix"`
	// WaitReplicas, when above 0, has a meter acknowledge its events only
	// once that many replicas of the Redis it writes to have the usage
	// (Redis's WAIT, within a second; else the events are applied again
	// later, each counted once), and a gateway send each lease release
	// again in the background until they have it: a failover then loses
	// no usage and holds no slot, when it is the number of replicas the
	// master has. For a single node or
	// redis.sentinel, not a Redis Cluster. Default 0.
	WaitReplicas int `yaml:"wait_replicas"`
}

// Sentinel is a master Redis Sentinel watches.
type Sentinel struct {
	// MasterName is the master's name in the sentinels' configuration.
	MasterName string `yaml:"master_name"`
	// Addrs lists the sentinels (host:port).
	Addrs []string `yaml:"addrs"`
	// Username and Password are the sentinels' own, when they ask for
	// one (Redis's are redis.username and redis.password).
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// DB is the master's database number (default 0).
	DB int `yaml:"db"`
}

// Enabled reports whether a Redis server is configured.
func (r Redis) Enabled() bool { return r.URL != "" || len(r.Addrs) > 0 || r.Sentinel.MasterName != "" }

// Admin is the admin API's own listener.
type Admin struct {
	// Listen is the admin listener's address (default none: no admin
	// listener; --admin-listen overrides it).
	Listen string `yaml:"listen"`
	// Token is the bearer token of /admin/ and /debug/pprof/; required
	// with Listen.
	Token string `yaml:"token"`
}

// Server holds the gateway's HTTP limits.
type Server struct {
	MaxBodyBytes      int64    `yaml:"max_body_bytes"`      // default 10 MiB
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"` // default 10s
	// BodyTimeout is how long a request body may stop coming (no byte
	// read) before the request is refused with 408.
	BodyTimeout Duration `yaml:"body_timeout"` // default 60s
	// SendTimeout is how long a reply may stop going out to its client
	// (a client that stops reading, its connection left open) before
	// the gateway cuts it.
	SendTimeout  Duration `yaml:"send_timeout"`  // default 60s
	IdleTimeout  Duration `yaml:"idle_timeout"`  // default 120s
	DrainTimeout Duration `yaml:"drain_timeout"` // default 30s
	// PublicStatus, false, keeps the gateway's own listener (which
	// clients reach) from serving /metrics and /readyz's details (backend
	// names and URLs, store errors): its /readyz then says only whether
	// it is ready; the admin listener's /readyz and /metrics stay as they
	// are. Default true.
	PublicStatus *bool `yaml:"public_status"`
}

// PublicStatusOn reports whether the gateway's own listener serves
// /metrics and /readyz's details.
func (s Server) PublicStatusOn() bool { return s.PublicStatus == nil || *s.PublicStatus }

// Backend is one inference engine.
type Backend struct {
	URL  string `yaml:"url"`
	Name string `yaml:"name"` // default: the URL
	// Weight is the backend's share of traffic (default 1). A backend
	// with weight 0 gets no traffic of its own and serves only as a
	// fallback.
	Weight int `yaml:"weight"`
	// Models, when set, are the only models routed to this backend.
	Models []string `yaml:"models"`
	// Headers are added to every request to this backend (credentials).
	Headers map[string]string `yaml:"headers"`
	// Timeouts per try.
	ConnectTimeout Duration `yaml:"connect_timeout"` // default 5s
	// WriteTimeout is how long writing a request to the backend may go
	// without the backend taking a byte of it (one that accepted the
	// connection but stopped reading the body).
	WriteTimeout Duration `yaml:"write_timeout"` // default 60s
	// FirstByteTimeout is a streaming request's wait from its last byte
	// to the answer's head; ResponseTimeout the same wait for a request
	// that does not stream, whose answer comes whole when generation ends.
	FirstByteTimeout Duration `yaml:"first_byte_timeout"` // default 60s
	ResponseTimeout  Duration `yaml:"response_timeout"`   // default 10m
	// ReadTimeout is how long a read of the answer's body may wait for
	// the backend once the head has come (as nginx's proxy_read_timeout):
	// it bounds a backend that sends a stream's head at once (vLLM, TGI)
	// and then nothing, queueing and prefill included, and any pause
	// between a stream's events. Its default is long enough for the
	// prefill of a very long prompt behind a queue.
	ReadTimeout Duration `yaml:"read_timeout"` // default 5m
	Timeout     Duration `yaml:"timeout"`      // total; default 0 = none
	// HealthCheckPath, when set, is the path this backend is actively
	// checked at instead of health_check.path: engines differ (vLLM, TGI
	// and llama.cpp answer /health, Ollama / or /api/version). A backend
	// with neither is not actively checked.
	HealthCheckPath string `yaml:"health_check_path"`
	// TLS, for an https:// backend, names a CA file in place of the
	// system's (a private CA) and a client certificate and key (a
	// backend that verifies clients), for requests and health checks.
	TLS TLS `yaml:"tls"`
}

// ModelKey is the form in which model names compare: Ollama's "name" and
// "name:latest" are one model (Ollama answers to both, and lists the
// second), in a backend's models, a key's allowed_models and a request.
func ModelKey(name string) string { return strings.TrimSuffix(name, ":latest") }

// UsageHook is the upstream's single webhook; it is one of the notifier's
// endpoints.
type UsageHook struct {
	Enabled *bool    `yaml:"enabled"` // default: true when url is set
	URL     string   `yaml:"url"`
	Timeout Duration `yaml:"timeout"` // default 5s
	// Retry is how many times a failed delivery is tried again after the
	// first attempt, as upstream means it: retry: 2 is at most 3 attempts
	// (default 2). Endpoints turns it into Webhook.MaxAttempts = Retry+1.
	Retry  int    `yaml:"retry"`
	Secret string `yaml:"secret"`
	// Unauthenticated: see Webhook.Unauthenticated.
	Unauthenticated bool `yaml:"unauthenticated"`
	// TLS: see Webhook.TLS.
	TLS TLS `yaml:"tls"`
}

// IsEnabled reports whether the usage hook delivers.
func (u UsageHook) IsEnabled() bool {
	if u.Enabled != nil {
		return *u.Enabled && u.URL != ""
	}
	return u.URL != ""
}

// Webhook is one endpoint the notifier delivers every event to.
type Webhook struct {
	// Name defaults to the URL's host and a hash of the URL, never its
	// path, which may hold a secret (see defaultName).
	Name        string   `yaml:"name"`
	URL         string   `yaml:"url"`
	Secret      string   `yaml:"secret"`
	Timeout     Duration `yaml:"timeout"`      // default 5s
	MaxAttempts int      `yaml:"max_attempts"` // default 10
	MaxAge      Duration `yaml:"max_age"`      // default 24h
	// BackoffMax caps the wait before a retry (default 5m; at least 1s):
	// after attempt n failed the wait is random in [0, min(BackoffMax,
	// 1s·2^(n-1))]. A low cap brings the backlog to a receiver soon after
	// an outage that did not answer with Retry-After.
	BackoffMax Duration `yaml:"backoff_max"`
	// Unauthenticated, when true, sends this endpoint the events of
	// requests refused without a valid key (key_id "unauthenticated")
	// too; by default they are not sent: anyone can make them, as fast
	// as the gateway refuses.
	Unauthenticated bool `yaml:"unauthenticated"`
	// TLS, for an https:// receiver, names a CA file in place of the
	// system's (a private CA) and a client certificate and key (a
	// receiver that verifies clients).
	TLS TLS `yaml:"tls"`
	// LegacyName is set, not read from the file, when Name was defaulted:
	// it is the name the URL's host and path gave before, so that the
	// notifier can take over that name's consumer instead of delivering
	// every retained event again. It may hold a secret: never log it.
	LegacyName string `yaml:"-"`
}

// HealthCheck configures active health checks of backends.
type HealthCheck struct {
	// Enabled defaults to true when path or any backend's
	// health_check_path is set.
	Enabled *bool `yaml:"enabled"`
	// Path is where every backend without a health_check_path is
	// checked, e.g. /health (default none).
	Path               string   `yaml:"path"`
	Interval           Duration `yaml:"interval"`            // default 10s
	Timeout            Duration `yaml:"timeout"`             // default 2s
	HealthyThreshold   int      `yaml:"healthy_threshold"`   // default 1
	UnhealthyThreshold int      `yaml:"unhealthy_threshold"` // default 2
	// Passive ejection: after FailureThreshold consecutive failures a
	// backend is skipped for Cooldown.
	FailureThreshold int      `yaml:"failure_threshold"` // default 3
	Cooldown         Duration `yaml:"cooldown"`          // default 10s
}

// Routing chooses a backend and hides failures.
type Routing struct {
	Retry Retry `yaml:"retry"`
	// LoadBalanceStrategy is round_robin (default), weighted,
	// least_connections, latency_based or least_load.
	LoadBalanceStrategy string     `yaml:"load_balance_strategy"`
	Fallback            []Fallback `yaml:"fallback"`
}

// Retry is the retry policy, applied only before the first byte has gone to
// the client.
type Retry struct {
	// Enabled turns retries on (default false: a failed try is the
	// client's answer). The other keys are refused without it, since
	// they would do nothing.
	Enabled bool `yaml:"enabled"`
	// MaxRetries is how many times a request is tried again after its
	// first try: 0 written means none (default 2 when the key is absent).
	MaxRetries  int      `yaml:"max_retries"`
	InitialWait Duration `yaml:"initial_wait"` // default 100ms
	MaxWait     Duration `yaml:"max_wait"`     // default 2s
	Multiplier  float64  `yaml:"multiplier"`   // default 2
	// On lists what is retried: "connect", "429", "5xx", "timeout"
	// (default all four when absent). An empty list is an error: it would
	// retry nothing, which enabled: false says plainly.
	On []string `yaml:"on"`
}

// Fallback sends a primary backend's traffic to others, in order, when the
// primary fails. Backends are named by URL (or name).
type Fallback struct {
	Primary  string   `yaml:"primary"`
	Fallback []string `yaml:"fallback"`
}

// Auth configures API keys.
type Auth struct {
	Enabled *bool `yaml:"enabled"` // default: true when api_keys are given or storage is redis
	// Storage is file (the api_keys list; default) or redis.
	Storage  string      `yaml:"storage"`
	Defaults KeyDefaults `yaml:"defaults"`
}

// KeyDefaults fill in what a key leaves unset.
type KeyDefaults struct {
	QuotaResetPeriod string `yaml:"quota_reset_period"` // default monthly
	TotalQuota       int64  `yaml:"total_quota"`        // 0 = unlimited
	// MaxTokensCap is reserved for a request that sets no max_tokens
	// (default 4096).
	MaxTokensCap int64 `yaml:"max_tokens_cap"`
	// ImageTokens is reserved for each image in a request's prompt, whose
	// real count the model decides (default 2048; 0: images reserve
	// nothing).
	ImageTokens int64 `yaml:"image_tokens"`
}

// APIKey is one key of the file key store.
type APIKey struct {
	// Key is the plaintext secret, or give KeySHA256 (hex) instead. No
	// spaces or line break around it: a client's key is read trimmed.
	Key       string `yaml:"key"`
	KeySHA256 string `yaml:"key_sha256"`
	// ID is the key's public id (default: derived from the hash).
	ID     string `yaml:"id"`
	Name   string `yaml:"name"`
	UserID string `yaml:"user_id"`
	Status string `yaml:"status"` // active (default) or disabled
	// TotalQuota is tokens per QuotaResetPeriod, 0 = unlimited; after
	// defaults it is never nil (auth.defaults.total_quota when unset).
	TotalQuota *int64 `yaml:"total_quota"`
	// QuotaResetPeriod is daily, weekly, monthly or never (default
	// auth.defaults.quota_reset_period).
	QuotaResetPeriod string   `yaml:"quota_reset_period"`
	AllowedIPs       []string `yaml:"allowed_ips"`
	AllowedModels    []string `yaml:"allowed_models"`
	ExpiresAt        string   `yaml:"expires_at"` // RFC 3339
	// Limits override rate_limit.per_key for this key, field by field: a
	// limit written here replaces per_key's (0: no limit of that kind for
	// this key), one left out is per_key's; enabled: false switches the
	// key's per-key limits off. After defaults it holds the key's resolved
	// limits (nil when the key writes none: per_key applies).
	Limits *PerKeyLimits `yaml:"limits"`
	// CaptureResponse overrides logging.capture_response for this key.
	CaptureResponse *bool `yaml:"capture_response"`
}

// RateLimit holds the global and per-key limits.
type RateLimit struct {
	Enabled *bool `yaml:"enabled"` // default true
	// Storage is memory (this process; default) or redis (shared).
	Storage string       `yaml:"storage"`
	Global  GlobalLimit  `yaml:"global"`
	PerKey  PerKeyLimits `yaml:"per_key"`
	// LeaseTTL bounds how long a request holds its max_concurrent slot when
	// its gateway dies without releasing it (default 2m, at least 1s). Long
	// streams renew their lease every LeaseTTL/2.
	LeaseTTL Duration `yaml:"lease_ttl"`
}

// GlobalLimit bounds the whole gateway fleet.
type GlobalLimit struct {
	Enabled           *bool   `yaml:"enabled"` // default: true when a rate is set
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	BurstSize         int     `yaml:"burst_size"` // default: requests_per_second, rounded up
}

// PerKeyLimits bound each key; zero means no limit.
type PerKeyLimits struct {
	Enabled           *bool   `yaml:"enabled"` // default: true when a limit is set
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	RequestsPerMinute int64   `yaml:"requests_per_minute"`
	TokensPerMinute   int64   `yaml:"tokens_per_minute"`
	MaxConcurrent     int64   `yaml:"max_concurrent"`
}

// Lua configures the script hooks.
type Lua struct {
	// Scripts are the script files, run in order; a relative path is
	// relative to the config file's directory (data_dir, by contrast, to
	// the working directory).
	Scripts []string `yaml:"scripts"`
	Timeout Duration `yaml:"timeout"` // default 50ms
	// FailOpen lets a request through when on_auth errors (default false:
	// fail closed).
	FailOpen bool `yaml:"fail_open"`
}

// Logging configures logs and the request log.
type Logging struct {
	Level           string `yaml:"level"` // debug, info (default), warn, error
	CaptureResponse bool   `yaml:"capture_response"`
	MaxCaptureBytes int    `yaml:"max_capture_bytes"` // default 65536
	// RefusalEvents is how many events a second each key id (and the
	// requests of no key, together) may have published of requests the
	// gateway refused before admitting them or asking a backend, with
	// ten seconds of them in a burst; the others are counted, not
	// published. Default 10.
	RefusalEvents int      `yaml:"refusal_events_per_second"`
	Redact        []string `yaml:"redact"`
	Postgres      Postgres `yaml:"postgres"`
}

// Postgres is the recorder's database.
type Postgres struct {
	URL string `yaml:"url"`
}

// AuthEnabled reports whether requests need an API key: auth.enabled when
// written, else true when api_keys are listed or keys live in Redis.
func (c *Config) AuthEnabled() bool {
	if c.Auth.Enabled != nil {
		return *c.Auth.Enabled
	}
	return len(c.APIKeys) > 0 || c.Auth.Storage == "redis"
}

// AuthOffUnsaid reports whether authentication is off without the config
// saying so (auth.enabled): no api_keys, keys from the file, no Lua
// scripts (an on_auth hook may be the gateway's check). Most likely a config
// that forgot its keys.
func (c *Config) AuthOffUnsaid() bool {
	return !c.AuthEnabled() && !c.given("auth.enabled") && len(c.Lua.Scripts) == 0
}

// RateLimitEnabled reports whether rate limits apply (rate_limit.enabled,
// default true). Each limit also has its own switch: see
// GlobalLimit.IsEnabled and PerKeyLimits.IsEnabled.
func (c *Config) RateLimitEnabled() bool {
	return c.RateLimit.Enabled == nil || *c.RateLimit.Enabled
}

// IsEnabled reports whether the global limit applies: enabled when
// written, else when a rate is set.
func (g GlobalLimit) IsEnabled() bool {
	if g.Enabled != nil {
		return *g.Enabled && g.RequestsPerSecond > 0
	}
	return g.RequestsPerSecond > 0
}

// IsEnabled reports whether the per-key limits apply: enabled when
// written, else when any limit is set.
func (l PerKeyLimits) IsEnabled() bool {
	if l.Enabled != nil {
		return *l.Enabled
	}
	return l.anySet()
}

// IsEnabled reports whether active health checks run: enabled when
// written, else when a path is set. Load fills enabled in, true when
// health_check.path or any backend's health_check_path is set, so that a
// backend's own path turns checks on for it unless enabled is false.
func (h HealthCheck) IsEnabled() bool {
	if h.Enabled != nil {
		return *h.Enabled
	}
	return h.Path != ""
}

// DataPath joins elem under data_dir (default "./data", relative to the
// working directory).
func (c *Config) DataPath(elem ...string) string {
	dir := c.DataDir
	if dir == "" {
		dir = DefaultDataDir
	}
	return filepath.Join(append([]string{dir}, elem...)...)
}
