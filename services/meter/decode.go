package meter

import (
	"bytes"
	"strconv"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

// meteredKeys are the JSON names of meteredFields.
var meteredKeys = []string{"request_id", "user_id", "key_id", "model", "timestamp", "latency_ms", "usage", "reservation", "backend_url"}

// decodeMetered fills a zero ev from data exactly as json.Unmarshal(data, ev)
// would, reading the top-level members in place: the request body and the
// captured response, most of an event's bytes, are only scanned past, and
// no reflection runs per member. It reports false when data holds anything
// it leaves to encoding/json (invalid JSON, escaped strings, counts that are
// not plain integers, a key spelled in another case, which encoding/json
// matches case-insensitively); ev is then in an unspecified state and the
// caller decodes again with json.Unmarshal, whose result and errors stand.
func decodeMetered(data []byte, ev *meteredFields) bool {
	if !jsonscan.Valid(data) {
		return false
	}
	i := skipWS(data, 0)
	if data[i] != '{' {
		return false
	}
	i++
	for {
		// data is valid JSON: after '{' or a value comes '}', or ',' and
		// a member.
		i = skipWS(data, i)
		if data[i] == '}' {
			return true
		}
		if data[i] == ',' {
			i = skipWS(data, i+1)
		}
		ke := stringEnd(data, i)
		key := data[i+1 : ke-1]
		i = skipWS(data, ke) + 1 // past ':'
		i = skipWS(data, i)
		ve := valueEnd(data, i)
		val := data[i:ve]
		i = ve
		ok := true
		switch string(key) {
		case "request_id":
			ok = setString(&ev.RequestID, val)
		case "user_id":
			ok = setString(&ev.UserID, val)
		case "key_id":
			ok = setString(&ev.KeyID, val)
		case "model":
			ok = setString(&ev.Model, val)
		case "backend_url":
			ok = setString(&ev.BackendURL, val)
		case "timestamp":
			// time.Time decodes itself; null leaves it unchanged.
			ok = ev.Timestamp.UnmarshalJSON(val) == nil
		case "latency_ms":
			ev.LatencyMS = val
		case "usage":
			ok = decodeUsage(val, &ev.Usage)
		case "reservation":
			ok = setInt(&ev.Reservation, val)
		default:
			ok = !foldsTo(key, meteredKeys)
		}
		if !ok {
			return false
		}
	}
}

// usageKeys are the JSON names of events.Usage.
var usageKeys = []string{"prompt_tokens", "completion_tokens", "total_tokens"}

// decodeUsage decodes the valid JSON value val into u as json.Unmarshal
// would, or reports false as decodeMetered does.
func decodeUsage(val []byte, u *events.Usage) bool {
	if string(val) == "null" {
		return true
	}
	if val[0] != '{' {
		return false
	}
	i := 1
	for {
		i = skipWS(val, i)
		if val[i] == '}' {
			return true
		}
		if val[i] == ',' {
			i = skipWS(val, i+1)
		}
		ke := stringEnd(val, i)
		key := val[i+1 : ke-1]
		i = skipWS(val, skipWS(val, ke)+1)
		ve := valueEnd(val, i)
		v := val[i:ve]
		i = ve
		ok := true
		switch string(key) {
		case "prompt_tokens":
			ok = setInt(&u.PromptTokens, v)
		case "completion_tokens":
			ok = setInt(&u.CompletionTokens, v)
		case "total_tokens":
			ok = setInt(&u.TotalTokens, v)
		default:
			ok = !foldsTo(key, usageKeys)
		}
		if !ok {
			return false
		}
	}
}

// setString stores the JSON string val in dst; null leaves dst unchanged.
// Strings with escapes or bytes that are not UTF-8 (which encoding/json
// replaces) are left to encoding/json.
func setString(dst *string, val []byte) bool {
	if string(val) == "null" {
		return true
	}
	if val[0] != '"' {
		return false
	}
	s := val[1 : len(val)-1]
	if bytes.IndexByte(s, '\\') >= 0 || !utf8.Valid(s) {
		return false
	}
	*dst = string(s)
	return true
}

// setInt stores the JSON integer val in dst; null leaves dst unchanged.
// Anything but plain digits is left to encoding/json.
func setInt(dst *int64, val []byte) bool {
	if string(val) == "null" {
		return true
	}
	if len(val) == 0 || len(val) > 18 {
		return false
	}
	for _, c := range val {
		if c < '0' || c > '9' {
			return false
		}
	}
	n, err := strconv.ParseInt(string(val), 10, 64)
	*dst = n
	return err == nil
}

// foldsTo reports whether encoding/json could match key to one of names:
// equal but for ASCII case, holding non-ASCII bytes (its folding maps a
// few non-ASCII letters to ASCII ones), or holding an escape (request\u005fid
// is request_id).
func foldsTo(key []byte, names []string) bool {
	for _, c := range key {
		if c >= utf8.RuneSelf || c == '\\' {
			return true
		}
	}
	for _, k := range names {
		if len(key) == len(k) && bytes.EqualFold(key, []byte(k)) {
			return true
		}
	}
	return false
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// valueEnd returns the index just past the valid JSON value at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	j := i
	for j < len(b) {
		switch b[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return j
		}
		j++
	}
	return j
}

// stringEnd returns the index just past the valid JSON string at b[i].
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}
