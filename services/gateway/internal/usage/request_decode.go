package usage

import (
	"bytes"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

// The JSON names decodeRequest reads, per object.
var (
	requestKeys = []string{"model", "stream", "max_tokens", "max_completion_tokens", "max_output_tokens", "n", "best_of",
		"stream_options", "options", "parameters", "messages", "system", "instructions", "prompt", "input", "inputs", "tools", "images"}
	streamOptionKeys = []string{"include_usage"}
	optionKeys       = []string{"num_predict"}
	parameterKeys    = []string{"max_new_tokens", "best_of"}
	messageKeys      = []string{"content", "tool_calls", "images"}
	toolCallKeys     = []string{"function"}
	functionKeys     = []string{"arguments"}
)

// decodeRequest fills a zero r from body exactly as json.Unmarshal(body, r)
// would, walking the body in place: encoding/json validates every byte and
// then decodes by reflection, which made it most of the cost of reading a
// request. Raw values alias body. It reports false for anything it leaves
// to encoding/json: invalid JSON, a member given twice (encoding/json
// merges some), null or a wrong type where a typed value goes, counts that
// are not plain integers, strings with escapes, keys spelled in another
// case; r is then in an unspecified state and the caller decodes again
// with json.Unmarshal, whose result and errors stand.
func decodeRequest(body []byte, r *requestBody) bool {
	if !jsonscan.Valid(body) {
		return false
	}
	var seen uint32
	return walkObject(body, requestKeys, func(k int, v []byte) bool {
		if seen&(1<<k) != 0 {
			return false
		}
		seen |= 1 << k
		switch requestKeys[k] {
		case "model":
			return decodeString(v, &r.Model)
		case "stream":
			return decodeBool(v, &r.Stream)
		case "max_tokens":
			return decodeCount(v, &r.MaxTokens)
		case "max_completion_tokens":
			return decodeCount(v, &r.MaxCompletionTokens)
		case "max_output_tokens":
			return decodeCount(v, &r.MaxOutputTokens)
		case "n":
			return decodeCount(v, &r.N)
		case "best_of":
			return decodeCount(v, &r.BestOf)
		case "stream_options":
			r.StreamOptions = &struct {
				IncludeUsage bool `json:"include_usage"`
			}{}
			return walkObject(v, streamOptionKeys, func(_ int, v []byte) bool {
				var b *bool
				if !decodeBool(v, &b) {
					return false
				}
				r.StreamOptions.IncludeUsage = *b
				return true
			})
		case "options":
			r.Options = &struct {
				NumPredict *int64 `json:"num_predict"`
			}{}
			return walkObject(v, optionKeys, func(_ int, v []byte) bool { return decodeCount(v, &r.Options.NumPredict) })
		case "parameters":
			r.Parameters = &struct {
				MaxNewTokens *int64 `json:"max_new_tokens"`
				BestOf       *int64 `json:"best_of"`
			}{}
			return walkObject(v, parameterKeys, func(i int, v []byte) bool {
				if i == 1 {
					return decodeCount(v, &r.Parameters.BestOf)
				}
				return decodeCount(v, &r.Parameters.MaxNewTokens)
			})
		case "messages":
			return decodeMessages(v, r)
		case "system":
			r.System = v
		case "instructions":
			r.Instructions = v
		case "prompt":
			r.Prompt = v
		case "input":
			r.Input = v
		case "inputs":
			r.Inputs = v
		case "tools":
			r.Tools = v
		case "images":
			r.Images = v
		}
		return true
	})
}

func decodeMessages(v []byte, r *requestBody) bool {
	if v[0] != '[' {
		return false
	}
	r.Messages = []requestMessage{}
	el := arrayElements(v)
	for m, ok := el.next(); ok; m, ok = el.next() {
		var msg requestMessage
		var seen uint32
		if !walkObject(m, messageKeys, func(k int, v []byte) bool {
			if seen&(1<<k) != 0 {
				return false
			}
			seen |= 1 << k
			switch k {
			case 0:
				msg.Content = v
			case 2:
				msg.Images = v
			default:
				return decodeToolCalls(v, &msg)
			}
			return true
		}) {
			return false
		}
		r.Messages = append(r.Messages, msg)
	}
	return true
}

func decodeToolCalls(v []byte, msg *requestMessage) bool {
	if v[0] != '[' {
		return false
	}
	msg.ToolCalls = []requestToolCall{}
	el := arrayElements(v)
	for c, ok := el.next(); ok; c, ok = el.next() {
		var call requestToolCall
		var seenFn bool
		if !walkObject(c, toolCallKeys, func(_ int, v []byte) bool {
			if seenFn {
				return false
			}
			seenFn = true
			var seenArgs bool
			return walkObject(v, functionKeys, func(_ int, v []byte) bool {
				if seenArgs {
					return false
				}
				seenArgs = true
				call.Function.Arguments = v
				return true
			})
		}) {
			return false
		}
		msg.ToolCalls = append(msg.ToolCalls, call)
	}
	return true
}

// walkObject calls member with the index in names and the raw value of
// each member of the valid JSON object v whose key is one of names, and
// stops at the first false. It reports false for a v that is not an object
// and for a key that encoding/json might match to a name while walkObject
// does not (another case, escapes, non-ASCII bytes).
func walkObject(v []byte, names []string, member func(k int, v []byte) bool) bool {
	if i := skipWS(v, 0); i >= len(v) || v[i] != '{' {
		return false
	}
	m := objectMembers(v)
	for key, val, ok := m.next(); ok; key, val, ok = m.next() {
		raw := key[1 : len(key)-1]
		k := -1
		for i, n := range names {
			if string(raw) == n {
				k = i
				break
			}
		}
		if k < 0 {
			if mayFold(raw, names) {
				return false
			}
			continue
		}
		if !member(k, val) {
			return false
		}
	}
	return true
}

// mayFold reports whether encoding/json could match key to one of names:
// equal but for ASCII case, or holding escapes or non-ASCII bytes (its
// folding maps a few non-ASCII letters to ASCII ones).
func mayFold(key []byte, names []string) bool {
	for _, c := range key {
		if c >= utf8.RuneSelf || c == '\\' {
			return true
		}
	}
	for _, n := range names {
		if len(key) == len(n) && bytes.EqualFold(key, []byte(n)) {
			return true
		}
	}
	return false
}

// decodeString stores the JSON string v; null leaves dst unchanged.
func decodeString(v []byte, dst *string) bool {
	if string(v) == "null" {
		return true
	}
	if v[0] != '"' {
		return false
	}
	s := v[1 : len(v)-1]
	if bytes.IndexByte(s, '\\') >= 0 || !utf8.Valid(s) {
		return false
	}
	*dst = string(s)
	return true
}

// decodeBool stores true or false; anything else (null included) is left to
// encoding/json.
func decodeBool(v []byte, dst **bool) bool {
	var b bool
	switch string(v) {
	case "true":
		b = true
	case "false":
	default:
		return false
	}
	*dst = &b
	return true
}

// decodeCount stores a plain non-negative integer; anything else (null
// included) is left to encoding/json.
func decodeCount(v []byte, dst **int64) bool {
	n, ok := parseCount(v)
	if !ok {
		return false
	}
	*dst = &n
	return true
}
