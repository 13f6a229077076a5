package gateway

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"unsafe"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redact"
)

// minScrubbedSecret is the shortest key scrubBodySecret looks for: a
// shorter one would match ordinary text.
const minScrubbedSecret = 8

// scrubbedSecret stands for a key scrubBodySecret took out of a body.
var scrubbedSecret = []byte(redact.Placeholder)

// scrubBodySecret returns body with every copy of the client's own key
// (secret, as it authenticated) replaced by "[REDACTED]": a client that
// also sends its key in the body (an "api_key" member, a key pasted into a
// message) must not have it reach the backend, the event, the request log
// or a webhook in the clear. The key is looked for as written and as JSON
// encoders escape it (with and without HTML escaping). body is returned as
// it is when it holds no copy, or when the body with them replaced would
// not be JSON (a key of digits that matched a number): the key is then not
// there as a string. Keys shorter than minScrubbedSecret are not looked
// for.
func scrubBodySecret(body []byte, secret string) []byte {
	if len(secret) < minScrubbedSecret || len(body) < len(secret) {
		return body
	}
	if plainInJSON(secret) {
		// The common case, a key of letters, digits and dashes: JSON
		// writes it as it is, and a body without it is returned at once
		// (a view of body, not a copy, for the search).
		if !strings.Contains(unsafe.String(unsafe.SliceData(body), len(body)), secret) {
			return body
		}
		return replaceForms(body, [][]byte{[]byte(secret)})
	}
	forms := [][]byte{[]byte(secret)}
	for _, html := range []bool{false, true} {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(html)
		if enc.Encode(secret) != nil {
			continue
		}
		q := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
		q = q[1 : len(q)-1]
		if !slices.ContainsFunc(forms, func(f []byte) bool { return bytes.Equal(f, q) }) {
			forms = append(forms, q)
		}
	}
	return replaceForms(body, forms)
}

// replaceForms replaces every copy of each of forms in body (see
// scrubBodySecret).
func replaceForms(body []byte, forms [][]byte) []byte {
	out, changed := body, false
	for _, f := range forms {
		if bytes.Contains(out, f) {
			out, changed = bytes.ReplaceAll(out, f, scrubbedSecret), true
		}
	}
	if !changed || !jsonscan.Valid(out) {
		return body
	}
	return out
}

// plainInJSON reports whether JSON encoders write s as it is: no quote,
// backslash, control character, HTML character or non-ASCII byte.
func plainInJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c >= 0x80, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// holdsKey reports whether s, a value the gateway would pass on or record
// (the client's X-Request-Id), holds the client's key secret (see
// minScrubbedSecret): such a value is not kept.
func holdsKey(s, secret string) bool {
	return len(secret) >= minScrubbedSecret && strings.Contains(s, secret)
}

// withoutKey returns s with the client's key secret, where s holds it (see
// holdsKey), replaced by redact.Placeholder.
func withoutKey(s, secret string) string {
	if !holdsKey(s, secret) {
		return s
	}
	return strings.ReplaceAll(s, secret, redact.Placeholder)
}
