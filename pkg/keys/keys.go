// Package keys is the API key store in Redis: the record of each key,
// indexed by the SHA-256 of its secret (what a gateway looks up) and by its
// public id (what an operator names). The plaintext secret is never stored:
// Create returns it once and keeps only its hash.
//
// Key layout, for prefix P:
//
//	P:keys:byhash:<sha256 hex>   string: the key's Record as JSON
//	P:keys:id:<id>               string: the key's sha256 hex
//	P:keys:ids                   set of every key id
//	P:keys:deleted               set of the ids of deleted keys, which no new
//	                             key may take: the ledger keeps usage by id
//
// The three keys of one API key live in different hash slots, so on Redis
// Cluster a Create or Delete is not atomic across them; every function here
// tolerates the leftovers of one that failed half way (an id without a record
// reads as not found, and Delete removes whatever is left).
package keys

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// SecretPrefix starts every secret Create makes.
const SecretPrefix = "sk-llmproxy-"

// secretLen is the number of random base62 characters after SecretPrefix
// (about 190 bits).
const secretLen = 32

// SecretPattern is a regular expression that matches a secret Create
// makes, wherever it stands in a text.
const SecretPattern = SecretPrefix + "[0-9A-Za-z]{32}"

// Statuses of a key.
const (
	StatusActive   = "active"
	StatusDisabled = "disabled"
)

var (
	// ErrNotFound reports an id or hash no key has.
	ErrNotFound = errors.New("key not found")
	// ErrExists reports a Create with an id another key has.
	ErrExists = errors.New("key id already exists")
	// ErrBusy reports a change that lost to other changes of the same key
	// for longer than an update waits.
	ErrBusy = errors.New("key is being changed by other requests; try again")
	// ErrDeleted reports a Create with the id of a deleted key. The ledger
	// keeps usage by key id, so a new key with that id would start with the
	// deleted key's usage (and late events of the deleted key would count
	// against it).
	ErrDeleted = errors.New("key id belonged to a deleted key, whose usage stays recorded under it; choose another id")
	// ErrInvalid reports a Spec that cannot be stored.
	ErrInvalid = errors.New("invalid key")
)

// Limits override rate_limit.per_key for one key, field by field: an unset
// field keeps the configured value, and 0 means no limit. Enabled false
// frees the key of every per-key limit, as api_keys[].limits.enabled does
// for a key of the file.
type Limits struct {
	Enabled           *bool    `json:"enabled,omitempty"`
	RequestsPerSecond *float64 `json:"requests_per_second,omitempty"`
	RequestsPerMinute *int64   `json:"requests_per_minute,omitempty"`
	TokensPerMinute   *int64   `json:"tokens_per_minute,omitempty"`
	MaxConcurrent     *int64   `json:"max_concurrent,omitempty"`
}

// IsZero reports whether l overrides nothing.
func (l *Limits) IsZero() bool {
	return l == nil || l.Enabled == nil && l.RequestsPerSecond == nil && l.RequestsPerMinute == nil &&
		l.TokensPerMinute == nil && l.MaxConcurrent == nil
}

// Apply returns base (rate_limit.per_key) with l's set fields in place of
// its own, as config.Load resolves a file key's limits: a key with
// overrides is limited even when per_key sets no limit of its own, and
// with per_key switched off (enabled: false) it has only its overrides.
func (l *Limits) Apply(base config.PerKeyLimits) config.PerKeyLimits {
	if l.IsZero() {
		return base
	}
	if l.Enabled != nil && !*l.Enabled {
		return config.PerKeyLimits{Enabled: l.Enabled}
	}
	if !base.IsEnabled() {
		base = config.PerKeyLimits{}
	}
	if l.RequestsPerSecond != nil {
		base.RequestsPerSecond = *l.RequestsPerSecond
	}
	if l.RequestsPerMinute != nil {
		base.RequestsPerMinute = *l.RequestsPerMinute
	}
	if l.TokensPerMinute != nil {
		base.TokensPerMinute = *l.TokensPerMinute
	}
	if l.MaxConcurrent != nil {
		base.MaxConcurrent = *l.MaxConcurrent
	}
	on := true
	base.Enabled = &on
	return base
}

// Spec is what an operator gives to create a key. Unset fields take
// auth.defaults and rate_limit.per_key when the key is used.
type Spec struct {
	// ID is the key's public id (default: "key_" and 12 hex digits of the
	// secret's hash): config.KeyIDPattern, as for a key of the file.
	ID     string `json:"id,omitempty"`
	Name   string `json:"name,omitempty"`
	UserID string `json:"user_id,omitempty"`
	// Status is active (default) or disabled.
	Status string `json:"status,omitempty"`
	// TotalQuota is tokens per QuotaResetPeriod; nil takes
	// auth.defaults.total_quota, 0 is unlimited.
	TotalQuota *int64 `json:"total_quota,omitempty"`
	// QuotaResetPeriod is daily, weekly, monthly or never; "" takes
	// auth.defaults.quota_reset_period.
	QuotaResetPeriod string     `json:"quota_reset_period,omitempty"`
	AllowedIPs       []string   `json:"allowed_ips,omitempty"`    // CIDRs or addresses, IPv4 or IPv6
	AllowedModels    []string   `json:"allowed_models,omitempty"` // empty: every model
	ExpiresAt        *time.Time `json:"expires_at,omitempty"`
	Limits           *Limits    `json:"limits,omitempty"`
	// CaptureResponse overrides logging.capture_response for this key, as
	// api_keys[].capture_response does for a key of the file; nil keeps it.
	CaptureResponse *bool `json:"capture_response,omitempty"`
}

// Record is a stored key: its Spec, resolved id and status, the SHA-256 of
// its secret, a masked form of the secret and when it was made.
type Record struct {
	Spec
	SHA256    string    `json:"sha256"`
	Masked    string    `json:"masked"` // e.g. "sk-llmproxy-…t123"
	CreatedAt time.Time `json:"created_at"`
}

// Active reports whether the record's status lets it be used (expiry aside).
func (r Record) Active() bool { return r.Status != StatusDisabled }

// APIKey returns the record as a config key, which auth resolves as it does
// the config file's keys; perKey is rate_limit.per_key, which the record's
// limit overrides amend.
func (r Record) APIKey(perKey config.PerKeyLimits) config.APIKey {
	k := config.APIKey{
		KeySHA256:        r.SHA256,
		ID:               r.ID,
		Name:             r.Name,
		UserID:           r.UserID,
		Status:           r.Status,
		TotalQuota:       r.TotalQuota,
		QuotaResetPeriod: r.QuotaResetPeriod,
		AllowedIPs:       r.AllowedIPs,
		AllowedModels:    r.AllowedModels,
		CaptureResponse:  r.CaptureResponse,
	}
	if r.ExpiresAt != nil {
		// With its fraction of a second, if any: the key expires when it
		// says, not up to a second early.
		k.ExpiresAt = r.ExpiresAt.UTC().Format(time.RFC3339Nano)
	}
	if !r.Limits.IsZero() {
		l := r.Limits.Apply(perKey)
		k.Limits = &l
	}
	return k
}

// Unprintable reports a character a key's name or user id may not hold,
// nor a table a terminal shows: a control character, a format character
// (a direction override) or a line or paragraph separator.
func Unprintable(r rune) bool {
	return unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp)
}

// maxLabel bounds a key's name and user id.
const maxLabel = 256

// Validate reports what in s cannot be stored; its error wraps ErrInvalid.
func (s Spec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
	}
	if s.ID != "" && !config.KeyIDPattern.MatchString(s.ID) {
		return bad("id %q: use %s", s.ID, config.KeyIDRule)
	}
	if config.ReservedKeyID(s.ID) {
		return bad("id %q is the id the gateway gives requests without a key of their own; choose another", s.ID)
	}
	for _, f := range []struct{ name, v string }{{"name", s.Name}, {"user_id", s.UserID}} {
		if len(f.v) > maxLabel {
			return bad("%s: at most %d bytes, got %d", f.name, maxLabel, len(f.v))
		}
		if !utf8.ValidString(f.v) || strings.IndexFunc(f.v, Unprintable) >= 0 {
			// A line break, a terminal escape or a right-to-left
			// override in a name would forge rows of `llmproxy keys list`.
			return bad("%s %q: no control or format characters (line breaks, tabs, escapes, direction overrides)", f.name, f.v)
		}
	}
	switch s.Status {
	case "", StatusActive, StatusDisabled:
	default:
		return bad("status %q: want active or disabled", s.Status)
	}
	if s.TotalQuota != nil && (*s.TotalQuota < 0 || *s.TotalQuota > config.MaxLimit) {
		return bad("total_quota %d: want 0 (unlimited) to %d", *s.TotalQuota, int64(config.MaxLimit))
	}
	if s.QuotaResetPeriod != "" {
		if _, err := ledger.ParsePeriod(s.QuotaResetPeriod); err != nil {
			return bad("quota_reset_period: %v", err)
		}
	}
	for _, ip := range s.AllowedIPs {
		if _, err := netip.ParsePrefix(ip); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(ip); err != nil {
			return bad("allowed_ips: %q is neither a CIDR nor an address", ip)
		}
	}
	for _, m := range s.AllowedModels {
		if strings.TrimSpace(m) == "" {
			// As the file's keys: a key limited to "" serves no request.
			return bad("allowed_models: empty model name")
		}
	}
	if l := s.Limits; l != nil {
		if l.Enabled != nil && !*l.Enabled && (l.RequestsPerSecond != nil || l.RequestsPerMinute != nil || l.TokensPerMinute != nil || l.MaxConcurrent != nil) {
			return bad("limits: enabled false frees the key of every limit; give it without requests_per_second, requests_per_minute, tokens_per_minute or max_concurrent")
		}
		if r := l.RequestsPerSecond; r != nil && !(*r >= 0 && *r <= config.MaxLimit) {
			return bad("limits.requests_per_second %v: want 0 (no limit) to %d", *r, int64(config.MaxLimit))
		}
		for _, f := range []struct {
			name string
			n    *int64
		}{{"requests_per_minute", l.RequestsPerMinute}, {"tokens_per_minute", l.TokensPerMinute}, {"max_concurrent", l.MaxConcurrent}} {
			if f.n != nil && (*f.n < 0 || *f.n > config.MaxLimit) {
				return bad("limits.%s %d: want 0 (no limit) to %d", f.name, *f.n, int64(config.MaxLimit))
			}
		}
	}
	return nil
}

// NewSecret returns a new secret: SecretPrefix and 32 random base62
// characters.
func NewSecret() string {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	out := make([]byte, 0, len(SecretPrefix)+secretLen)
	out = append(out, SecretPrefix...)
	var buf [64]byte
	for len(out) < cap(out) {
		_, _ = rand.Read(buf[:]) // never fails (crypto/rand)
		for _, b := range buf {
			// Rejection sampling: 248 = 4×62, so every character is
			// equally likely.
			if b < 248 && len(out) < cap(out) {
				out = append(out, alphabet[b%62])
			}
		}
	}
	return string(out)
}

// Hash returns the hex SHA-256 of a secret.
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Mask returns a form of secret safe to show: its prefix up to the last dash
// (at most 12 characters), "…", and its last four characters.
func Mask(secret string) string {
	if len(secret) <= 8 {
		return "…"
	}
	prefix := secret[:6]
	if i := strings.LastIndexByte(secret[:min(len(secret)-4, 13)], '-'); i > 0 {
		prefix = secret[:i+1]
	}
	return prefix + "…" + secret[len(secret)-4:]
}
