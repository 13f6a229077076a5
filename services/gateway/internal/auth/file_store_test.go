package auth

import (
	"context"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
)

// TestKeyLimits: a key's limits override rate_limit.per_key field by field,
// for a key of the file and one in Redis alike: a field left out keeps
// per_key's, a field written as 0 is no limit of that kind for this key,
// and a block that writes no non-zero limit does not switch the others off.
func TestKeyLimits(t *testing.T) {
	cfg, err := config.Parse([]byte(`
backends: [{url: "http://127.0.0.1:9"}]
rate_limit:
  per_key: { requests_per_minute: 100, tokens_per_minute: 1000, max_concurrent: 5 }
api_keys:
  - { key: sk-none, id: none }
  - { key: sk-empty, id: empty, limits: {} }
  - { key: sk-tpm0, id: tpm0, limits: { tokens_per_minute: 0 } }
  - { key: sk-mc2, id: mc2, limits: { max_concurrent: 2 } }
  - { key: sk-off, id: off, limits: { enabled: false } }
`), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fs, err := NewFileStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	zero, two := int64(0), int64(2)
	fromRedis := func(l *keys.Limits) func(*testing.T) *Key {
		return func(t *testing.T) *Key {
			k, err := FromRecord(cfg, keys.Record{Spec: keys.Spec{ID: "r", Limits: l}, SHA256: HashSecret("sk-r")})
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
	}
	perKey := config.PerKeyLimits{RequestsPerMinute: 100, TokensPerMinute: 1000, MaxConcurrent: 5}
	tests := []struct {
		name string
		key  func(*testing.T) *Key
		want config.PerKeyLimits
		on   bool
	}{
		{"file: no limits", lookupFile(fs, "sk-none"), perKey, true},
		{"file: empty block", lookupFile(fs, "sk-empty"), perKey, true},
		{"file: tokens_per_minute 0", lookupFile(fs, "sk-tpm0"), config.PerKeyLimits{RequestsPerMinute: 100, MaxConcurrent: 5}, true},
		{"file: max_concurrent 2", lookupFile(fs, "sk-mc2"), config.PerKeyLimits{RequestsPerMinute: 100, TokensPerMinute: 1000, MaxConcurrent: 2}, true},
		{"file: enabled false", lookupFile(fs, "sk-off"), perKey, false},
		{"redis: no overrides", fromRedis(nil), perKey, true},
		{"redis: --tpm 0", fromRedis(&keys.Limits{TokensPerMinute: &zero}), config.PerKeyLimits{RequestsPerMinute: 100, MaxConcurrent: 5}, true},
		{"redis: --max-concurrent 2", fromRedis(&keys.Limits{MaxConcurrent: &two}), config.PerKeyLimits{RequestsPerMinute: 100, TokensPerMinute: 1000, MaxConcurrent: 2}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := tt.key(t)
			if k.Limits.IsEnabled() != tt.on {
				t.Errorf("limits on = %v, want %v", k.Limits.IsEnabled(), tt.on)
			}
			got := k.Limits
			got.Enabled = nil
			if got != tt.want {
				t.Errorf("limits = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// lookupFile returns a function that looks secret up in fs.
func lookupFile(fs *FileStore, secret string) func(*testing.T) *Key {
	return func(t *testing.T) *Key {
		k, err := fs.LookupHash(context.Background(), HashSecret(secret))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
}
