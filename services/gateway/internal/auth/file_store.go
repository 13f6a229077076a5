package auth

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// ErrUnknownKey is returned for a secret no store knows.
var ErrUnknownKey = errors.New("unknown API key")

// Store finds keys by the SHA-256 of their secret.
type Store interface {
	LookupHash(ctx context.Context, hash string) (*Key, error)
}

// ClientStore is a Store whose look-ups of keys it has not read are
// budgeted per client (RedisStore).
type ClientStore interface {
	Store
	LookupHashFrom(ctx context.Context, hash string, client netip.Addr) (*Key, error)
}

// FileStore holds the keys of the config file's api_keys list. It is
// immutable after NewFileStore and safe for concurrent use.
type FileStore struct {
	byHash map[string]*Key
}

// NewFileStore builds the key store of cfg's api_keys, with auth.defaults
// and rate_limit.per_key filling what a key leaves unset.
func NewFileStore(cfg *config.Config) (*FileStore, error) {
	s := &FileStore{byHash: make(map[string]*Key, len(cfg.APIKeys))}
	for i, k := range cfg.APIKeys {
		key, err := FromConfig(cfg, k)
		if err != nil {
			return nil, fmt.Errorf("api_keys[%d]: %w", i, err)
		}
		s.byHash[key.Hash] = key
	}
	return s, nil
}

// LookupHash returns the key whose secret hashes to hash.
func (s *FileStore) LookupHash(_ context.Context, hash string) (*Key, error) {
	if k, ok := s.byHash[hash]; ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// FromConfig resolves one configured key.
func FromConfig(cfg *config.Config, k config.APIKey) (*Key, error) {
	hash := strings.ToLower(k.KeySHA256)
	if k.Key != "" {
		hash = HashSecret(k.Key)
	}
	if hash == "" {
		return nil, errors.New("key or key_sha256 is required")
	}
	key := &Key{
		ID:       k.ID,
		Name:     k.Name,
		UserID:   k.UserID,
		Hash:     hash,
		Disabled: k.Status == "disabled",
		Period:   k.QuotaResetPeriod,
		Quota:    cfg.Auth.Defaults.TotalQuota,
		Limits:   cfg.RateLimit.PerKey,
		Capture:  k.CaptureResponse,
	}
	if key.ID == "" {
		key.ID = "key_" + hash[:12]
	}
	if key.Period == "" {
		key.Period = cfg.Auth.Defaults.QuotaResetPeriod
	}
	if key.Period == "" {
		key.Period = "monthly"
	}
	if k.TotalQuota != nil {
		key.Quota = *k.TotalQuota
	}
	if k.Limits != nil {
		// Already resolved against rate_limit.per_key, field by field (a
		// limit of 0 is no limit for this key): by config.Load for the
		// file's keys, by keys.Record.APIKey for Redis's.
		key.Limits = *k.Limits
	}
	if k.ExpiresAt != "" {
		t, err := time.Parse(time.RFC3339, k.ExpiresAt)
		if err != nil {
			return nil, fmt.Errorf("expires_at: %w", err)
		}
		key.ExpiresAt = t
	}
	for _, s := range k.AllowedIPs {
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("allowed_ips: %w", err)
		}
		key.AllowedIPs = append(key.AllowedIPs, p)
	}
	if len(k.AllowedModels) > 0 {
		key.AllowedModels = make(map[string]bool, len(k.AllowedModels))
		for _, m := range k.AllowedModels {
			key.AllowedModels[m] = true
		}
	}
	return key, nil
}

// ParsePrefix parses a CIDR or a single address (as a /32 or /128). An
// IPv4-mapped IPv6 range (::ffff:10.0.0.0/104) becomes the IPv4 range it
// maps (10.0.0.0/8), as a mapped address becomes an IPv4 one: client
// addresses are compared in their IPv4 form, which a mapped range would
// never contain.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		p = p.Masked()
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
