package gateway

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/llmproxy/llmproxy/pkg/events"
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
// encoders escape it (with and without HTML escaping), and, where the body
// has escapes JSON allows but encoders do not write for the key's
// characters (\u0073 for "s", \/ for "/"), in every string as JSON reads it
// (see scrubEscapedSecret). body is returned as it is when it holds no
// copy, or when the body with them replaced would not be JSON (a key of
// digits that matched a number): the key is then not there as a string.
// Keys shorter than minScrubbedSecret are not looked for.
func scrubBodySecret(body []byte, secret string) []byte {
	if len(secret) < minScrubbedSecret || len(body) < len(secret) {
		return body
	}
	out, whole := scrubSecretForms(body, secret)
	if !whole || mayHoldEscapedSecret(out, secret) {
		out = scrubEscapedSecret(out, secret)
	}
	return out
}

// scrubSecretForms replaces secret in body as written and as JSON encoders
// escape it (see scrubBodySecret). whole is false when it found a form but
// replacing it would have made body other than JSON (the key overlapped
// a number or an escape), so that body is returned as it is.
func scrubSecretForms(body []byte, secret string) (out []byte, whole bool) {
	if plainInJSON(secret) {
		// The common case, a key of letters, digits and dashes: JSON
		// writes it as it is, and a body without it is returned at once
		// (a view of body, not a copy, for the search).
		if !strings.Contains(unsafe.String(unsafe.SliceData(body), len(body)), secret) {
			return body, true
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

// mayHoldEscapedSecret reports whether body has an escape that JSON
// encoders do not write for any of secret's characters but a client may:
// a \u escape of one of them (of any non-ASCII character, for a key that
// holds one), or \/ for a key with a '/'. Bodies without one (nearly all:
// encoders \u-escape only control, HTML and, some, non-ASCII characters)
// cannot hold the key in a form scrubSecretForms missed.
func mayHoldEscapedSecret(body []byte, secret string) bool {
	if strings.IndexByte(secret, '/') >= 0 && bytes.Contains(body, []byte(`\/`)) {
		return true
	}
	ascii := true
	for i := 0; i < len(secret); i++ {
		if secret[i] >= 0x80 {
			ascii = false
			break
		}
	}
	// JSON's \u takes a lower-case u; an ASCII key's characters are \u00XX.
	esc := []byte(`\u00`)
	if !ascii {
		esc = esc[:2]
	}
	for i := 0; ; i += 2 {
		j := bytes.Index(body[i:], esc)
		if j < 0 || i+j+6 > len(body) {
			return false
		}
		i += j
		r, _ := jsonscan.DecodeU(body[i:])
		if r != utf8.RuneError && (r >= 0x80 && !ascii || r < 0x80 && strings.IndexByte(secret, byte(r)) >= 0) {
			return true
		}
	}
}

// scrubEscapedSecret replaces secret in every string of the JSON body as
// JSON reads it (escapes undone): a string holding it is written again,
// escaped as encoding/json escapes it, with the key replaced. body is
// returned as it is when no string holds it, or when it is not JSON.
func scrubEscapedSecret(body []byte, secret string) []byte {
	var out []byte
	last := 0 // body[:last] is in out
	for i := 0; i < len(body); i++ {
		if body[i] != '"' {
			continue
		}
		end := i + 1
		for end < len(body) && body[end] != '"' {
			if body[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(body) {
			return body // a string without its end: not JSON
		}
		lit := body[i : end+1]
		if len(lit) >= len(secret) {
			var s string
			if json.Unmarshal(lit, &s) == nil && strings.Contains(s, secret) {
				var b bytes.Buffer
				enc := json.NewEncoder(&b)
				enc.SetEscapeHTML(false)
				if enc.Encode(strings.ReplaceAll(s, secret, redact.Placeholder)) == nil {
					out = append(append(out, body[last:i]...), bytes.TrimSuffix(b.Bytes(), []byte("\n"))...)
					last = end + 1
				}
			}
		}
		i = end
	}
	if out == nil {
		return body
	}
	out = append(out, body[last:]...)
	if !jsonscan.Valid(out) {
		return body
	}
	return out
}

// replaceForms replaces every copy of each of forms in body (see
// scrubSecretForms).
func replaceForms(body []byte, forms [][]byte) ([]byte, bool) {
	out, changed := body, false
	for _, f := range forms {
		if bytes.Contains(out, f) {
			out, changed = bytes.ReplaceAll(out, f, scrubbedSecret), true
		}
	}
	if !changed {
		return body, true
	}
	if !jsonscan.Valid(out) {
		return body, false
	}
	return out, true
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

// textWithoutKey is s, a captured reply (JSON, cut JSON or plain text),
// with the client's key replaced as written and in JSON's escapes.
func textWithoutKey(s, secret string) string {
	return withoutKey(string(scrubBodySecret([]byte(s), secret)), secret)
}

// scrubEventSecret takes the key out of what on_complete may have written
// into ev (its tags, request body and captured response), as it is taken
// out of the body and headers a script sets: a script sees the key and
// may have kept it from on_request.
func scrubEventSecret(ev *events.RequestCompleted, secret string) {
	if len(secret) < minScrubbedSecret {
		return
	}
	for k, v := range ev.Tags {
		if holdsKey(v, secret) || holdsKey(k, secret) {
			delete(ev.Tags, k)
			ev.Tags[withoutKey(k, secret)] = withoutKey(v, secret)
		}
	}
	ev.RequestBody = scrubBodySecret(ev.RequestBody, secret)
	if ev.Response != nil {
		ev.Response.Content = textWithoutKey(ev.Response.Content, secret)
	}
}
