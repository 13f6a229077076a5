package config

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// KeyIDPattern is what a key's public id may be, in the file (api_keys[].id)
// and in the Redis key store (llmproxy keys create --id) alike: 1 to 64
// letters, digits, '_' or '-'. The id is one token of the event subject
// llmproxy.v1.request.completed.<key_id>, so it never holds a '.'.
var KeyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ReservedKeyID reports whether id is one the gateway gives requests
// without a key of their own (events.AnonymousKeyID with auth off,
// events.UnauthenticatedKeyID refused for want of a valid key), which no
// key may take: its requests would be counted, limited and listed with
// theirs.
func ReservedKeyID(id string) bool {
	return id == events.AnonymousKeyID || id == events.UnauthenticatedKeyID
}

// KeyIDRule says in words what KeyIDPattern allows, for error messages.
const KeyIDRule = "1 to 64 letters, digits, '_' or '-' (no '.': the id is a token of event subjects)"

// Hash returns the hex SHA-256 of the key's secret: of Key when given, else
// KeySHA256 lowercased. Keys are looked up by this hash, never by the secret.
func (k APIKey) Hash() string {
	if k.Key != "" {
		sum := sha256.Sum256([]byte(k.Key))
		return hex.EncodeToString(sum[:])
	}
	return strings.ToLower(k.KeySHA256)
}

// PublicID returns the key's public id: ID when set, else "key_" and the
// first 12 hex digits of Hash. It is safe to log and to put in event
// subjects.
func (k APIKey) PublicID() string {
	if k.ID != "" {
		return k.ID
	}
	h := k.Hash()
	if len(h) > 12 {
		h = h[:12]
	}
	return "key_" + h
}
