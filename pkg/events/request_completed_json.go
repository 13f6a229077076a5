package events

import (
	"encoding/json"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

// AppendJSON appends the JSON encoding of e to dst and returns the extended
// slice. The bytes are exactly those json.Marshal(e) produces, errors
// included, without reflection: the gateway encodes one event per request.
// Unlike Marshal it writes e as it is (an empty Schema stays empty, a nil
// RequestBody is written as null). On error dst is returned unextended.
func (e *RequestCompleted) AppendJSON(dst []byte) ([]byte, error) {
	n0 := len(dst)
	b := append(dst, `{"schema":`...)
	b = appendString(b, e.Schema)
	b = append(b, `,"request_id":`...)
	b = appendString(b, e.RequestID)
	b = append(b, `,"user_id":`...)
	b = appendString(b, e.UserID)
	b = append(b, `,"api_key":`...)
	b = appendString(b, e.APIKey)
	b = append(b, `,"request_body":`...)
	b, err := appendRawJSON(b, e.RequestBody)
	if err != nil {
		return dst[:n0], err
	}
	b = append(b, `,"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, e.Usage.PromptTokens, 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, e.Usage.CompletionTokens, 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, e.Usage.TotalTokens, 10)
	b = append(b, `},"is_stream":`...)
	b = strconv.AppendBool(b, e.IsStream)
	b = append(b, `,"endpoint":`...)
	b = appendString(b, e.Endpoint)
	b = append(b, `,"timestamp":`...)
	if b, err = appendTime(b, e.Timestamp); err != nil {
		return dst[:n0], err
	}
	b = append(b, `,"backend_url":`...)
	b = appendString(b, e.BackendURL)
	b = append(b, `,"latency_ms":`...)
	b = strconv.AppendInt(b, e.LatencyMS, 10)
	b = append(b, `,"status_code":`...)
	b = strconv.AppendInt(b, int64(e.StatusCode), 10)
	b = append(b, `,"key_id":`...)
	b = appendString(b, e.KeyID)
	b = append(b, `,"key_name":`...)
	b = appendString(b, e.KeyName)
	b = append(b, `,"model":`...)
	b = appendString(b, e.Model)
	b = append(b, `,"usage_source":`...)
	b = appendString(b, e.UsageSource)
	b = append(b, `,"ttft_ms":`...)
	b = strconv.AppendInt(b, e.TTFTMS, 10)
	b = append(b, `,"finish_reason":`...)
	b = appendString(b, e.FinishReason)
	b = append(b, `,"client_ip":`...)
	b = appendString(b, e.ClientIP)
	b = append(b, `,"error":`...)
	b = appendString(b, e.Error)
	b = append(b, `,"reservation":`...)
	b = strconv.AppendInt(b, e.Reservation, 10)
	if e.QuotaPeriod != "" {
		b = append(b, `,"quota_period":`...)
		b = appendString(b, e.QuotaPeriod)
	}
	if e.ClientRequestID != "" {
		b = append(b, `,"client_request_id":`...)
		b = appendString(b, e.ClientRequestID)
	}
	if len(e.Tags) > 0 {
		b = append(b, `,"tags":`...)
		b = appendTags(b, e.Tags)
	}
	if e.Response != nil {
		b = append(b, `,"response":{"content":`...)
		b = appendString(b, e.Response.Content)
		b = append(b, `,"truncated":`...)
		b = strconv.AppendBool(b, e.Response.Truncated)
		b = append(b, '}')
	}
	if e.Truncated {
		b = append(b, `,"truncated":true`...)
	}
	return append(b, '}'), nil
}

// encodedSizeHint is a close upper bound of len(AppendJSON) for e when no
// string needs escaping, so that Marshal allocates once.
func (e *RequestCompleted) encodedSizeHint() int {
	// Field names, punctuation and the widest numbers and timestamp.
	n := 660 + len(e.RequestBody) + len(e.Schema) + len(e.RequestID) + len(e.UserID) +
		len(e.APIKey) + len(e.Endpoint) + len(e.BackendURL) + len(e.KeyID) + len(e.KeyName) +
		len(e.Model) + len(e.UsageSource) + len(e.FinishReason) + len(e.ClientIP) +
		len(e.Error) + len(e.QuotaPeriod) + len(e.ClientRequestID)
	for k, v := range e.Tags {
		n += len(k) + len(v) + 6
	}
	if e.Response != nil {
		n += len(e.Response.Content)
	}
	return n
}

// appendTags writes m as encoding/json writes a map[string]string: keys in
// byte order.
func appendTags(b []byte, m map[string]string) []byte {
	// Events carry a handful of tags; sorting their keys in a stack array
	// keeps the common case free of allocations.
	var stack [16]string
	keys := stack[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	return append(b, '}')
}

// appendTime writes t as time.Time.MarshalJSON does. The times it refuses
// (years outside [0,9999], zone offsets of 24 hours or more) are handed to
// encoding/json so that the error is the one json.Marshal returns.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	n0 := len(b)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	if !strictRFC3339(b[n0+1:]) {
		enc, err := json.Marshal(t)
		if err != nil {
			return b[:n0], err
		}
		return append(b[:n0], enc...), nil
	}
	return append(b, '"'), nil
}

// strictRFC3339 reports whether ts, formatted with time.RFC3339Nano, is
// valid RFC 3339, by the checks time.Time.MarshalJSON makes.
func strictRFC3339(ts []byte) bool {
	if len(ts) < len("0000-00-00T00:00:00Z") || ts[len("9999")] != '-' {
		return false // the year is not exactly 4 digits wide
	}
	if ts[len(ts)-1] == 'Z' {
		return true
	}
	if c := ts[len(ts)-len("Z07:00")]; '0' <= c && c <= '9' {
		return false // the zone hour is more than 2 digits wide
	}
	h := ts[len(ts)-len("07:00"):]
	return 10*(h[0]-'0')+(h[1]-'0') < 24
}

// appendRawJSON writes body as encoding/json writes a json.RawMessage:
// validated, compacted and HTML-escaped. A body that is already compact and
// holds nothing to escape, the usual case, is copied as it is; any other
// body goes through encoding/json, which also gives the error for an
// invalid one.
func appendRawJSON(b, body []byte) ([]byte, error) {
	if body == nil {
		return append(b, "null"...), nil
	}
	if jsonscan.Valid(body) && verbatim(body) {
		return append(b, body...), nil
	}
	enc, err := json.Marshal(json.RawMessage(body))
	if err != nil {
		return b, err
	}
	return append(b, enc...), nil
}

// verbatim reports whether compacting and HTML-escaping the valid JSON
// value v would leave it unchanged: no whitespace outside strings, and no
// '<', '>', '&', U+2028 or U+2029 anywhere.
func verbatim(v []byte) bool {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '"':
			if i = verbatimString(v, i+1); i < 0 {
				return false
			}
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			return false
		}
		// Outside strings, valid JSON holds no other byte that changes.
	}
	return true
}

// verbatimString returns the index of the quote that ends the valid JSON
// string whose content starts at v[i], or -1 if the string holds a byte
// that HTML escaping changes.
func verbatimString(v []byte, i int) int {
	for ; i < len(v); i++ {
		if !stringStop[v[i]] {
			continue
		}
		switch c := v[i]; {
		case c == '"':
			return i
		case c == '\\':
			i++ // the escaped byte cannot end the string
		case c == 0xE2:
			if i+2 < len(v) && v[i+1] == 0x80 && v[i+2]&^1 == 0xA8 {
				return -1
			}
		default: // '<', '>' or '&'
			return -1
		}
	}
	return -1
}

// stringStop marks the bytes verbatimString must look at: the first byte of
// U+2028 and U+2029, and the ASCII it cannot skip.
var stringStop = [256]bool{'"': true, '\\': true, '<': true, '>': true, '&': true, 0xE2: true}

const hexDigits = "0123456789abcdef"

// htmlSafe holds true for the bytes encoding/json copies into a string
// unescaped: ASCII but control characters, '"', '\\', '<', '>' and '&'.
// Bytes from 0x80 start a UTF-8 sequence and must be decoded.
var htmlSafe = func() (t [256]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = true
	}
	t['"'], t['\\'], t['<'], t['>'], t['&'] = false, false, false, false, false
	return t
}()

// appendString writes s as a JSON string exactly as encoding/json does by
// default: HTML-safe, with U+2028 and U+2029 escaped and each invalid UTF-8
// byte replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if htmlSafe[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			b = appendEscapedASCII(b, c)
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			// Valid JSON, but they end lines in JavaScript.
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendEscapedASCII writes the escape encoding/json uses for the ASCII
// byte c, which htmlSafe rejects.
func appendEscapedASCII(b []byte, c byte) []byte {
	switch c {
	case '\\', '"':
		return append(b, '\\', c)
	case '\b':
		return append(b, '\\', 'b')
	case '\f':
		return append(b, '\\', 'f')
	case '\n':
		return append(b, '\\', 'n')
	case '\r':
		return append(b, '\\', 'r')
	case '\t':
		return append(b, '\\', 't')
	}
	return append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
}
