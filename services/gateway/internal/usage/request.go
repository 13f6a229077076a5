package usage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unsafe"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

// ErrNotObject is returned for a request body that is valid JSON but not an
// object.
var ErrNotObject = errors.New("request body is not a JSON object")

// RequestInfo is what the gateway needs from a request body for admission and
// estimation.
type RequestInfo struct {
	// Model is the "model" field.
	Model string
	// Stream is the "stream" field. StreamSet reports whether the field was
	// present at all: Ollama's /api/chat and /api/generate stream when it is
	// absent, TGI streams by path (/generate_stream).
	Stream    bool
	StreamSet bool
	// MaxTokens is the largest completion cap the client asked for in
	// OpenAI's and Anthropic's fields: max_tokens, max_completion_tokens,
	// max_output_tokens (Responses API); 0 when none is set. Engines do
	// not agree which of them wins (vLLM takes max_completion_tokens over
	// max_tokens), so only the largest bounds what any of them generates.
	MaxTokens int64
	// NumPredict is Ollama's options.num_predict and MaxNewTokens TGI's
	// parameters.max_new_tokens, each 0 when absent or not positive
	// (Ollama's -1 and -2: no cap).
	NumPredict, MaxNewTokens int64
	// CapsFolded reports a cap given only under a name in another case
	// (MAX_TOKENS): engines written in Go (Ollama) read it, those in
	// Python, Rust or C++ (vLLM, TGI, llama.cpp) ignore it and generate
	// without a cap. The caps above are then the largest of every
	// spelling and every repeat, and a reservation counts no less than
	// the cap of a request that sets none.
	CapsFolded bool
	// IncludeUsage reports stream_options.include_usage == true as sent by
	// the client, in that spelling; false also when the body needed
	// encoding/json to read it (a name in another case, given twice, or
	// escaped), whose exact spelling AddIncludeUsage then reads.
	IncludeUsage bool
	// Messages counts the chat messages (plus one for an Anthropic or
	// Ollama top-level system prompt), for the per-message overhead.
	Messages int
	// PromptTokenIDs counts the token ids of a prompt given as ids rather
	// than text (prompt or input of /v1/completions and /v1/embeddings:
	// an array of integers, or of such arrays).
	PromptTokenIDs int64
	// Choices is how many completions the request asks for: the largest of
	// n and best_of (OpenAI, vLLM) and TGI's parameters.best_of, at least
	// 1.
	Choices int64
	// Prompts is how many prompts a completions request batches (prompt an
	// array of strings or of token-id arrays), each given Choices
	// completions; 0 for one prompt.
	Prompts int64
	// Images is how many images the prompt holds: content parts of type
	// image_url (OpenAI chat), input_image (Responses) or image
	// (Anthropic), and the entries of Ollama's images lists. Their tokens
	// depend on the model and the image, so Prompt leaves them out.
	Images int64
	// Prompt is the prompt text for estimation, joined by "\n": the system
	// prompt or instructions, message contents (text parts of multi-part
	// contents) and tool-call arguments, prompt, input or inputs, and the
	// raw JSON of tool definitions (which the model also reads).
	Prompt string
}

type requestBody struct {
	Model               string `json:"model"`
	Stream              *bool  `json:"stream"`
	MaxTokens           *int64 `json:"max_tokens"`
	MaxCompletionTokens *int64 `json:"max_completion_tokens"`
	MaxOutputTokens     *int64 `json:"max_output_tokens"`
	N                   *int64 `json:"n"`
	BestOf              *int64 `json:"best_of"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Options *struct {
		NumPredict *int64 `json:"num_predict"`
	} `json:"options"`
	Parameters *struct {
		MaxNewTokens *int64 `json:"max_new_tokens"`
		BestOf       *int64 `json:"best_of"`
	} `json:"parameters"`
	Messages     []requestMessage `json:"messages"`
	System       json.RawMessage  `json:"system"`
	Instructions json.RawMessage  `json:"instructions"`
	Prompt       json.RawMessage  `json:"prompt"`
	Input        json.RawMessage  `json:"input"`
	Inputs       json.RawMessage  `json:"inputs"`
	Tools        json.RawMessage  `json:"tools"`
	Images       json.RawMessage  `json:"images"`
}

type requestMessage struct {
	Content   json.RawMessage   `json:"content"`
	ToolCalls []requestToolCall `json:"tool_calls"`
	Images    json.RawMessage   `json:"images"`
}

type requestToolCall struct {
	Function struct {
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

// ParseRequest reads a request body in one JSON pass. Invalid JSON, a body
// that is not an object, or a field of the wrong type returns an error; the
// proxy answers 400.
func ParseRequest(body []byte) (RequestInfo, error) {
	var info RequestInfo
	t := skipSpace(body)
	if len(t) == 0 || t[0] != '{' {
		if json.Valid(body) {
			return info, ErrNotObject
		}
		var v any
		return info, fmt.Errorf("parse request: %w", json.Unmarshal(body, &v))
	}
	var r requestBody
	slow := !decodeRequest(body, &r)
	if slow {
		r = requestBody{}
		if err := json.Unmarshal(body, &r); err != nil {
			return info, fmt.Errorf("parse request: %w", err)
		}
	}
	info.Model = r.Model
	if r.Stream != nil {
		info.Stream, info.StreamSet = *r.Stream, true
	}
	if r.StreamOptions != nil && !slow {
		// encoding/json also takes "Include_Usage", which the engines
		// the gateway asks for usage (vLLM, llama.cpp, TGI) do not read:
		// a body it had to read is left to AddIncludeUsage, which looks
		// at the exact spelling.
		info.IncludeUsage = r.StreamOptions.IncludeUsage
	}
	for _, c := range [3]*int64{r.MaxTokens, r.MaxCompletionTokens, r.MaxOutputTokens} {
		if c != nil && *c > info.MaxTokens {
			info.MaxTokens = *c
		}
	}
	if r.Options != nil && r.Options.NumPredict != nil && *r.Options.NumPredict > 0 {
		info.NumPredict = *r.Options.NumPredict
	}
	if r.Parameters != nil && r.Parameters.MaxNewTokens != nil && *r.Parameters.MaxNewTokens > 0 {
		info.MaxNewTokens = *r.Parameters.MaxNewTokens
	}

	info.Choices = 1
	choices := [3]*int64{r.N, r.BestOf}
	if r.Parameters != nil {
		choices[2] = r.Parameters.BestOf
	}
	for _, c := range choices {
		if c != nil && *c > info.Choices {
			info.Choices = *c
		}
	}
	if slow {
		// Only a body decodeRequest left to encoding/json can spell a
		// name in another case or give it twice.
		if err := scanSpellings(body, &info); err != nil {
			return info, err
		}
	}
	info.PromptTokenIDs = countTokenIDs(r.Prompt, 0) + countTokenIDs(r.Input, 0) + countTokenIDs(r.Inputs, 0)
	info.Prompts = countPrompts(r.Prompt)

	var p []byte
	images := &info.Images
	if !isNullOrEmpty(r.System) {
		p = appendPromptValue(p, r.System, 0, images)
		info.Messages++
	}
	p = appendPromptValue(p, r.Instructions, 0, images)
	for _, m := range r.Messages {
		p = appendPromptValue(p, m.Content, 0, images)
		for _, c := range m.ToolCalls {
			p = appendPromptRaw(p, c.Function.Arguments)
		}
		info.Images += countElements(m.Images)
		info.Messages++
	}
	p = appendPromptValue(p, r.Prompt, 0, images)
	p = appendPromptValue(p, r.Input, 0, images)
	p = appendPromptValue(p, r.Inputs, 0, images)
	p = appendPromptRaw(p, r.Tools)
	info.Images += countElements(r.Images)
	// p is this call's own and never written again: the string shares
	// it rather than copy a prompt that may be megabytes long.
	info.Prompt = unsafe.String(unsafe.SliceData(p), len(p))
	return info, nil
}

// appendPromptValue appends the text in a content value: a string, an array
// of strings or of parts ({"type":"text","text":...}; Anthropic tool_result
// parts nest "content"; Responses API input items carry "content"), joined
// by "\n". Token-id arrays contribute nothing; each image part adds one to
// *images.
func appendPromptValue(dst, raw []byte, depth int, images *int64) []byte {
	if isNullOrEmpty(raw) || depth > 8 {
		return dst
	}
	switch raw[0] {
	case '"':
		if len(dst) > 0 {
			dst = append(dst, '\n')
		}
		return appendUnquoted(dst, raw)
	case '[':
		el := arrayElements(raw)
		for v, ok := el.next(); ok; v, ok = el.next() {
			dst = appendPromptValue(dst, v, depth+1, images)
		}
	case '{':
		m := objectMembers(raw)
		for k, v, ok := m.next(); ok; k, v, ok = m.next() {
			switch {
			case keyIs(k, "text") || keyIs(k, "content"):
				dst = appendPromptValue(dst, v, depth+1, images)
			case keyIs(k, "type") && isImageType(v):
				*images++
			}
		}
	}
	return dst
}

// isImageType reports whether raw, a part's "type", names an image part.
func isImageType(raw []byte) bool {
	switch string(raw) {
	case `"image_url"`, `"input_image"`, `"image"`:
		return true
	}
	return false
}

// countElements returns the length of raw when it is a JSON array (Ollama's
// images: one base64 string per image), else 0.
func countElements(raw []byte) int64 {
	if len(raw) == 0 || raw[0] != '[' {
		return 0
	}
	var n int64
	el := arrayElements(raw)
	for _, ok := el.next(); ok; _, ok = el.next() {
		n++
	}
	return n
}

// countPrompts counts the prompts of a batch: the strings and arrays in an
// array (a single prompt of token ids, an array of integers, is none).
func countPrompts(raw []byte) int64 {
	if len(raw) == 0 || raw[0] != '[' {
		return 0
	}
	var n int64
	el := arrayElements(raw)
	for v, ok := el.next(); ok; v, ok = el.next() {
		if len(v) > 0 && (v[0] == '"' || v[0] == '[') {
			n++
		}
	}
	return n
}

// countTokenIDs counts the integers in a prompt given as token ids: an
// array of integers, or an array of such arrays (a batch).
func countTokenIDs(raw []byte, depth int) int64 {
	if len(raw) == 0 || raw[0] != '[' || depth > 1 {
		return 0
	}
	var n int64
	el := arrayElements(raw)
	for v, ok := el.next(); ok; v, ok = el.next() {
		switch {
		case len(v) > 0 && (v[0] == '-' || v[0] >= '0' && v[0] <= '9'):
			n++
		case len(v) > 0 && v[0] == '[':
			n += countTokenIDs(v, depth+1)
		}
	}
	return n
}

// appendPromptRaw appends a raw JSON value (tool definitions, tool-call
// arguments) as text: the model reads it as such.
func appendPromptRaw(dst, raw []byte) []byte {
	if isNullOrEmpty(raw) {
		return dst
	}
	if len(dst) > 0 {
		dst = append(dst, '\n')
	}
	if isJSONString(raw) {
		return appendUnquoted(dst, raw)
	}
	return append(dst, raw...)
}

// AddIncludeUsage makes a streaming OpenAI request ask for usage: it sets
// "stream_options":{"include_usage":true} when the body has "stream": true
// and include_usage is not already true. added reports a change; the proxy
// then hides the usage-only chunk (IsUsageOnlyChunk) from the client, who
// did not ask for it — this includes the case where the client sent
// include_usage:false.
//
// Call it only for /v1/chat/completions and /v1/completions: no other API
// takes stream_options (Anthropic, Ollama, TGI and the Responses API report
// usage unasked).
//
// Every other byte is kept: the option is spliced into an existing
// stream_options object (other fields kept), replaces a null stream_options
// or include_usage value in place, or is spliced in before the body's final
// "}". Non-streaming bodies, and bodies whose stream_options is not an
// object, come back unchanged. Invalid JSON or a non-object returns an error.
func AddIncludeUsage(body []byte) (newBody []byte, added bool, err error) {
	if !jsonscan.Valid(body) {
		return body, false, errors.New("add include_usage: invalid JSON")
	}
	t := skipSpace(body)
	if len(t) == 0 || t[0] != '{' {
		return body, false, ErrNotObject
	}
	stream, opts, ok := topLevelField(body, 0, "stream", "stream_options")
	if !ok || stream.start < 0 || !bytes.Equal(body[stream.start:stream.end], litTrue) {
		return body, false, nil
	}
	const opt = `{"include_usage":true}`
	if opts.start < 0 || bytes.Equal(body[opts.start:opts.end], litNull) {
		if opts.start >= 0 {
			return splice(body, opts.start, opts.end, opt), true, nil
		}
		end := closingBrace(body)
		return splice(body, end, end, `,"stream_options":`+opt), true, nil
	}
	if body[opts.start] != '{' {
		return body, false, nil
	}
	inc, _, ok := topLevelField(body[:opts.end], opts.start, "include_usage", "")
	if !ok {
		return body, false, nil
	}
	if inc.start >= 0 {
		if bytes.Equal(body[inc.start:inc.end], litTrue) {
			return body, false, nil
		}
		return splice(body, inc.start, inc.end, "true"), true, nil
	}
	end := opts.end - 1 // the object's '}'
	if len(skipSpace(body[opts.start+1:end])) == 0 {
		return splice(body, opts.start+1, opts.start+1, `"include_usage":true`), true, nil
	}
	return splice(body, end, end, `,"include_usage":true`), true, nil
}

// span is a value's byte range in a body; start is -1 when the key is absent.
type span struct{ start, end int }

// topLevelField finds the values of up to two keys among the members of the
// JSON object starting at body[from] (exact, case-sensitive key match, after
// escapes are decoded, as Python's reader does: "stre\u0061m" is "stream";
// the last occurrence wins, as in encoding/json and Python). body must be
// valid JSON.
func topLevelField(body []byte, from int, key1, key2 string) (v1, v2 span, ok bool) {
	v1, v2 = span{-1, -1}, span{-1, -1}
	obj := body[from:]
	end := valueEnd(obj, skipWS(obj, 0))
	if end < 0 {
		return v1, v2, false
	}
	m := objectMembers(obj[:end])
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		s := span{from + m.i - len(v), from + m.i}
		switch {
		case keyNamed(k, key1):
			v1 = s
		case key2 != "" && keyNamed(k, key2):
			v2 = s
		}
	}
	return v1, v2, true
}

// keyNamed reports whether the JSON string key is name once its escapes are
// decoded.
func keyNamed(key []byte, name string) bool {
	if bytes.IndexByte(key, '\\') < 0 {
		return keyIs(key, name)
	}
	return string(appendUnquoted(nil, key)) == name
}

// closingBrace returns the index of the final '}' of a valid JSON object.
func closingBrace(body []byte) int {
	return bytes.LastIndexByte(body, '}')
}

func splice(body []byte, start, end int, ins string) []byte {
	out := make([]byte, 0, len(body)-(end-start)+len(ins))
	out = append(out, body[:start]...)
	out = append(out, ins...)
	return append(out, body[end:]...)
}

// CompletionCap is the most completion tokens (per choice) the engine
// behind path generates for this request by the request's own fields; 0
// when they set no cap. Ollama's own API reads only options.num_predict and
// TGI's only parameters.max_new_tokens: a max_tokens beside them caps
// nothing. Elsewhere (OpenAI's and Anthropic's APIs, an engine's OpenAI
// server) it is the largest cap of any field the request sets, so that no
// engine's reading of them generates more.
func (info RequestInfo) CompletionCap(path string) int64 {
	switch path {
	case "/api/chat", "/api/generate":
		return info.NumPredict
	case "/generate", "/generate_stream":
		return info.MaxNewTokens
	}
	return max(info.MaxTokens, info.NumPredict, info.MaxNewTokens)
}

// CompletionBound is the most completion tokens, all choices together, an
// engine behind path that honours the request's cap can generate: the cap
// times the completions (the choices of every prompt); 0 when the request sets no cap every engine reads (none,
// or one only under a name in another case, which vLLM, TGI and llama.cpp
// ignore). An estimate of a reply's completion is never more: the gateway's
// tokenizer is not the engine's, and counts more tokens than the engine
// made in some texts.
func (info RequestInfo) CompletionBound(path string) int64 {
	limit := info.CompletionCap(path)
	if limit <= 0 || info.CapsFolded {
		return 0
	}
	c := info.Completions(path)
	if limit > math.MaxInt64/c {
		return math.MaxInt64
	}
	return limit * c
}

// Completions is how many completions the request to path asks for:
// Choices for each of its prompts (a batch on /v1/completions, the one API
// that takes one; a "prompt" elsewhere is no prompt the engine reads), at
// least 1.
func (info RequestInfo) Completions(path string) int64 {
	c, p := max(info.Choices, 1), int64(1)
	if path == "/v1/completions" {
		p = max(info.Prompts, 1)
	}
	if c > math.MaxInt64/p {
		return math.MaxInt64
	}
	return c * p
}

// capNames are the completion caps' names: at the top level, in
// "options" (Ollama) and in "parameters" (TGI).
var (
	topCapNames    = [...]string{"max_tokens", "max_completion_tokens", "max_output_tokens"}
	nestedCapNames = [...][2]string{{"options", "num_predict"}, {"parameters", "max_new_tokens"}}
)

// AmbiguousFieldError is a request that gives a field twice, or under
// another spelling, with different values: engines disagree on which one
// counts (Go's JSON matches names in any case, Python's does not), so the
// gateway could route, check or bill a model or a stream the engine does
// not serve.
type AmbiguousFieldError struct{ Field string }

func (e *AmbiguousFieldError) Error() string {
	return "the request gives \"" + e.Field + "\" more than once (or under another spelling) with different values"
}

// scanSpellings reads a valid JSON object body under every spelling an
// engine may match (encoding/json matches names in any case; Python's,
// Rust's and C++'s JSON readers match them exactly) and every repeat (each
// reader keeps the last). It raises info's completion caps and Choices to
// the largest value found, so that no engine's reading generates more
// than the reservation counts, and sets info.CapsFolded when a cap appears
// only under other spellings. A model or stream given with different
// values is an *AmbiguousFieldError.
func scanSpellings(body []byte, info *RequestInfo) error {
	var exact, folded [3]bool
	caps := [3]*int64{&info.MaxTokens, &info.NumPredict, &info.MaxNewTokens}
	note := func(i int, isExact bool, v []byte) {
		n, ok := parseCount(v)
		if !ok {
			return
		}
		if isExact {
			exact[i] = true
		} else {
			folded[i] = true
		}
		*caps[i] = max(*caps[i], n)
	}
	choices := func(v []byte) {
		if n, ok := parseCount(v); ok {
			info.Choices = max(info.Choices, n)
		}
	}
	seen := map[string]string{} // model and stream: the first value
	// nullLast: the field's last value in its exact spelling is null,
	// which encoding/json reads as no change and Python's reader, which
	// keeps the last, as None.
	nullLast := map[string]bool{}
	same := func(field string, exact bool, v []byte) error {
		if string(v) == "null" {
			if exact {
				nullLast[field] = true
			}
			return nil
		}
		if exact {
			nullLast[field] = false
		}
		val := string(v)
		if isJSONString(v) {
			val = string(appendUnquoted(nil, v))
		}
		if first, ok := seen[field]; ok && first != val {
			return &AmbiguousFieldError{Field: field}
		}
		seen[field] = val
		return nil
	}
	m := objectMembers(body)
	for key, val, ok := m.next(); ok; key, val, ok = m.next() {
		name := string(appendUnquoted(nil, key))
		for _, n := range topCapNames {
			if strings.EqualFold(name, n) {
				note(0, name == n, val)
			}
		}
		for _, n := range [...]string{"model", "stream"} {
			if strings.EqualFold(name, n) {
				if err := same(n, name == n, val); err != nil {
					return err
				}
			}
		}
		if strings.EqualFold(name, "n") || strings.EqualFold(name, "best_of") {
			choices(val)
		}
		for i, nn := range nestedCapNames {
			if !strings.EqualFold(name, nn[0]) {
				continue
			}
			in := objectMembers(val)
			for k, v, ok := in.next(); ok; k, v, ok = in.next() {
				inner := string(appendUnquoted(nil, k))
				if strings.EqualFold(inner, nn[1]) {
					note(1+i, name == nn[0] && inner == nn[1], v)
				}
				if nn[0] == "parameters" && strings.EqualFold(inner, "best_of") {
					choices(v)
				}
			}
		}
	}
	for i := range exact {
		if folded[i] && !exact[i] {
			info.CapsFolded = true
		}
	}
	for _, n := range [...]string{"model", "stream"} {
		if _, given := seen[n]; given && nullLast[n] {
			return &AmbiguousFieldError{Field: n}
		}
	}
	return nil
}
