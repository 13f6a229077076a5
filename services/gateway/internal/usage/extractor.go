package usage

import (
	"bytes"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

// DefaultMaxText is the text bound used when Options.MaxText is 0.
const DefaultMaxText = 64 << 10

// Options tune an Extractor.
type Options struct {
	// MaxText bounds, in bytes, the completion text the Extractor keeps.
	// 0 means DefaultMaxText; a negative value keeps no text (TextBytes is
	// still counted).
	MaxText int
}

// Result is what an Extractor read off a response.
type Result struct {
	// PromptTokens and CompletionTokens are the backend's counts when it sent
	// them, else 0.
	PromptTokens     int64
	CompletionTokens int64
	// Found reports that the backend sent its final usage: CompletionTokens
	// is the backend's count (0 for embeddings). When false, estimate from
	// Text (see CountTokens).
	Found bool
	// PromptKnown reports that PromptTokens is the backend's count. It can be
	// false while Found is true: TGI reports the prompt length only in
	// stream details (input_length) or with decoder_input_details (prefill),
	// and Ollama omits prompt_eval_count when the prompt was cached. The
	// caller then uses EstimatePrompt for the prompt.
	PromptKnown bool
	// FinishReason is the backend's stop reason as sent ("stop", "length",
	// "end_turn", "eos_token", ...); empty if none was seen.
	FinishReason string
	// Model is the model name the backend reported.
	Model string
	// Text is the assembled completion: content deltas, reasoning deltas and
	// tool-call arguments of every choice, in arrival order, cut at the
	// MaxText bound on a UTF-8 boundary.
	Text string
	// TextBytes is the length of the whole assembled text, including what
	// was cut; a caller can scale an estimate made from a truncated Text.
	TextBytes int64
	// TextTruncated reports that Text was cut at MaxText.
	TextTruncated bool
	// BackendError reports that the backend wrote an error into its reply
	// (a stream's error event): vLLM's and llama.cpp's data: {"error":{...}},
	// TGI's {"error":..., "error_type":...}, Ollama's {"error":...} line,
	// Anthropic's and the Responses API's events of type "error", and the
	// Responses API's response.failed.
	BackendError bool
	// CountRejected reports that the backend sent a count above
	// events.MaxTokenCount. No engine counts that many tokens for one
	// request, so its usage is taken as absent: Found and PromptKnown are
	// false and the counts 0, and the caller estimates.
	CountRejected bool
}

// Extractor reads usage, model, finish reason and completion text from one
// response, event by event or from a whole body. It keeps parse state between
// calls and reuses its buffers: once they have grown, an event costs no
// allocation (the model and finish reason strings are made once).
//
// An Extractor serves one request and is not safe for concurrent use.
// Malformed events are ignored: usage extraction never fails a response.
type Extractor struct {
	format  Format
	maxText int
	noText  bool
	res     Result
	text    []byte
	scratch []byte
	dec     []byte
	// The Anthropic input counts seen so far (message_start, then any
	// message_delta that repeats them).
	antIn, antCacheWrite, antCacheRead int64
	// promptOnly: the backend's usage gave the prompt's count and no
	// completion count.
	promptOnly bool
}

// NewExtractor returns an Extractor for responses in format f.
func NewExtractor(f Format, opts Options) *Extractor {
	m := opts.MaxText
	if m == 0 {
		m = DefaultMaxText
	}
	if m < 0 {
		m = 0
	}
	return &Extractor{format: f, maxText: m, noText: opts.MaxText < 0}
}

// Event reads one piece emitted by a Splitter: an SSE event (for the SSE
// formats) or an NDJSON line. "data: [DONE]", comments, pings, blank pieces
// and unparsable events are ignored.
func (e *Extractor) Event(ev []byte) {
	data := ev
	if e.format.sse() {
		if bytes.HasPrefix(ev, litEventField) && isErrorEvent(ev) {
			// llama.cpp names its Anthropic-style error event this way
			// without a "type" in the data.
			e.res.BackendError = true
		}
		var ok bool
		data, e.scratch, ok = sseData(ev, e.scratch)
		if !ok {
			return
		}
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return // [DONE], keep-alives, raw overflow pieces
	}
	e.parse(data, true)
}

// Body reads a whole non-streamed JSON response body.
func (e *Extractor) Body(b []byte) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return
	}
	e.parse(b, false)
}

func (e *Extractor) parse(obj []byte, stream bool) {
	if !jsonscan.Valid(obj) {
		return
	}
	switch e.format.family() {
	case familyOpenAI:
		e.openai(obj)
	case familyAnthropic:
		e.anthropic(obj)
	case familyOllama:
		e.ollama(obj)
	case familyTGI:
		e.tgi(obj, stream)
	}
}

// Result returns what was read so far. It may be called at any time, e.g.
// when the client left mid-stream.
func (e *Extractor) Result() Result {
	r, _ := e.Partial(0)
	r.Text = string(e.text)
	return r
}

// Partial is Result without its Text, for a look at a stream under way:
// it copies nothing. text is the kept text from byte from on; it aliases
// the Extractor's buffer and is valid until its next call.
func (e *Extractor) Partial(from int) (r Result, text []byte) {
	r = e.res
	if e.promptOnly && r.TextBytes > 0 {
		// Usage without a completion count, for a reply that has text:
		// the completion is not the backend's 0, it is estimated. (An
		// embedding's usage has only the prompt, and no text.)
		r.Found, r.CompletionTokens = false, 0
	}
	if r.PromptTokens > events.MaxTokenCount || r.CompletionTokens > events.MaxTokenCount {
		r.PromptTokens, r.CompletionTokens = 0, 0
		r.Found, r.PromptKnown, r.CountRejected = false, false, true
	}
	if from < len(e.text) {
		text = e.text[from:]
	}
	return r, text
}

// addText appends decoded text, honouring the bound.
func (e *Extractor) addText(p []byte) {
	if len(p) == 0 {
		return
	}
	e.res.TextBytes += int64(len(p))
	room := e.maxText - len(e.text)
	if room <= 0 {
		e.res.TextTruncated = e.res.TextTruncated || !e.noText
		return
	}
	if len(p) > room {
		cut := room
		for cut > 0 && !utf8.RuneStart(p[cut]) {
			cut--
		}
		p = p[:cut]
		e.res.TextTruncated = true
		e.text = append(e.text, p...)
		e.maxText = len(e.text) // a later short piece must not sneak in
		return
	}
	e.text = append(e.text, p...)
}

// Unread counts n bytes of an event the gateway relayed but could not read
// (one larger than its Splitter reassembles) as text not kept: an estimate
// of the completion then counts them, four bytes a token when no text was
// read at all.
func (e *Extractor) Unread(n int) {
	if n > 0 {
		e.res.TextBytes += int64(n)
		e.res.TextTruncated = true
	}
}

// addJSONString appends the decoded JSON string raw to the text.
func (e *Extractor) addJSONString(raw []byte) {
	if !isJSONString(raw) || len(raw) == 2 {
		return
	}
	e.dec = appendUnquoted(e.dec[:0], raw)
	e.addText(e.dec)
}

// addJSONRaw appends a raw JSON value (tool arguments sent as an object).
func (e *Extractor) addJSONRaw(raw []byte) {
	if isNullOrEmpty(raw) {
		return
	}
	if isJSONString(raw) {
		e.addJSONString(raw)
		return
	}
	e.addText(raw)
}

func (e *Extractor) setModel(raw []byte) {
	if e.res.Model != "" || !isJSONString(raw) || len(raw) == 2 {
		return
	}
	e.dec = appendUnquoted(e.dec[:0], raw)
	e.res.Model = string(e.dec)
}

func (e *Extractor) setFinish(raw []byte) {
	if !isJSONString(raw) || len(raw) == 2 {
		return
	}
	e.dec = appendUnquoted(e.dec[:0], raw)
	if e.res.FinishReason != string(e.dec) {
		e.res.FinishReason = string(e.dec)
	}
}

// setBackendError notes an "error" member of a reply's top-level object;
// a null one (the Responses API's "error":null) is no error.
func (e *Extractor) setBackendError(raw []byte) {
	if !isNullOrEmpty(raw) {
		e.res.BackendError = true
	}
}

var (
	litEventField = []byte("event:")
	litError      = []byte("error")
)

// isErrorEvent reports whether the SSE event ev is named "error".
func isErrorEvent(ev []byte) bool {
	name, ok := sseField(ev, "event")
	return ok && bytes.Equal(bytes.TrimSpace(name), litError)
}
