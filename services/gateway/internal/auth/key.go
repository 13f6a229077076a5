// Package auth finds the API key a request presents and decides whether it
// may be used: status, expiry, client IP and model. Keys are looked up by the
// SHA-256 of the secret; the plaintext is never stored or logged.
package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
)

// Key is a resolved API key. A Key is immutable once built and safe to share.
type Key struct {
	ID            string
	Name          string
	UserID        string
	Hash          string
	Disabled      bool
	ExpiresAt     time.Time // zero = never
	AllowedIPs    []netip.Prefix
	AllowedModels map[string]bool // nil = every model
	Quota         int64           // tokens per period; 0 = unlimited
	Period        string          // daily, weekly, monthly, never
	Limits        config.PerKeyLimits
	Capture       *bool // per-key override of logging.capture_response
}

// HashSecret returns the hex SHA-256 of a presented secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Mask returns a form of secret that is safe to log and to put in events.
// It shows at most a third of what is secret, and never more than its last
// four characters: "…" and the last characters of the secret, none for a
// secret of eight characters or fewer. The prefix every key made by
// `llmproxy keys` starts with (keys.SecretPrefix, "sk-llmproxy-") is public
// and kept, and does not count: a made key shows as "sk-llmproxy-…t123".
func Mask(secret string) string {
	prefix, rest := "", secret
	if r, ok := strings.CutPrefix(secret, keys.SecretPrefix); ok {
		prefix, rest = keys.SecretPrefix, r
	}
	n := 0
	if len(rest) > 8 {
		n = min(4, len(rest)/3)
	}
	i := len(rest) - n
	for i < len(rest) && !utf8.RuneStart(rest[i]) {
		i++ // show less rather than part of a character
	}
	return prefix + "…" + rest[i:]
}

// Check decides whether k may be used now, from ip. It returns nil or an
// error a user can act on. Requests for a model are also checked with
// CheckModel.
func (k *Key) Check(now time.Time, ip netip.Addr) *apierr.Error {
	if k.Disabled {
		return apierr.Forbidden("key_disabled", "this API key is disabled; ask your administrator to enable it")
	}
	if !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt) {
		return apierr.Forbidden("key_expired", "this API key expired at "+k.ExpiresAt.UTC().Format(time.RFC3339)+"; ask for a new one")
	}
	if len(k.AllowedIPs) > 0 && !allowedIP(k.AllowedIPs, ip) {
		return apierr.Forbidden("ip_not_allowed", "this API key may not be used from "+ip.String()+"; use it from an allowed network or ask your administrator to add this address to its allowed_ips")
	}
	return nil
}

// CheckModel decides whether k may be used for a request naming model ("" for
// a request that names none). A key limited to some models must name one of
// them: a request without a model could be served any model a backend has.
func (k *Key) CheckModel(model string) *apierr.Error {
	if k.AllowedModels == nil {
		return nil
	}
	if model == "" {
		return apierr.Forbidden("model_not_allowed", "this API key may only use the models "+modelList(k.AllowedModels)+"; the request must name one of them in \"model\"")
	}
	if !k.AllowsModel(model) {
		return apierr.Forbidden("model_not_allowed", "this API key may not use model "+model+"; allowed: "+modelList(k.AllowedModels))
	}
	return nil
}

// AllowsModel reports whether k may use model: every model when it names
// none, else one it names, where Ollama's "name" and "name:latest" are the
// one model (Ollama answers to both, and lists the second).
func (k *Key) AllowsModel(model string) bool {
	if k.AllowedModels == nil {
		return true
	}
	if model == "" {
		return false
	}
	base := config.ModelKey(model)
	return k.AllowedModels[model] || k.AllowedModels[base] || k.AllowedModels[base+":latest"]
}

// allowedIP reports whether ip is in one of prefixes. A link-local client's
// address carries its zone (fe80::1%eth0), which no prefix can hold and
// Contains would never match: it is compared without it.
func allowedIP(prefixes []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func sortedModels(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// maxListedModels bounds the models an error lists: a key may allow
// thousands, and each refusal would carry them all.
const maxListedModels = 20

// modelList is models, sorted, for an error: at most maxListedModels, then
// how many more.
func modelList(models map[string]bool) string {
	all := sortedModels(models)
	if len(all) <= maxListedModels {
		return strings.Join(all, ", ")
	}
	return strings.Join(all[:maxListedModels], ", ") + " and " + strconv.Itoa(len(all)-maxListedModels) + " more"
}
