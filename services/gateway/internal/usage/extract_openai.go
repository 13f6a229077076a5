package usage

import (
	"bytes"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

// openai reads an OpenAI-style body or stream chunk: chat completions
// (choices[].message / .delta), completions (choices[].text), embeddings
// (usage only) and the Responses API (an "output" array in bodies; typed
// stream events carrying "delta" or a "response" object). It also reads
// llama.cpp's native completion shape, which llama-server builds before
// its OpenAI-style /v1/completions (December 2024) answer that path with:
// a flat object with "content", the counts in tokens_evaluated and
// tokens_predicted, and a stream of such objects without [DONE].
func (e *Extractor) openai(obj []byte) {
	var usage, typ, delta, output, status, response []byte
	var evaluated, predicted, stopType, stoppedLimit []byte
	m := objectMembers(obj)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "choices"):
			e.openaiChoices(v)
		case keyIs(k, "model"):
			e.setModel(v)
		case keyIs(k, "usage"):
			usage = v
		case keyIs(k, "type"):
			typ = v
		case keyIs(k, "delta"):
			delta = v
		case keyIs(k, "output"):
			output = v
		case keyIs(k, "status"):
			status = v
		case keyIs(k, "response"):
			response = v
		case keyIs(k, "error"):
			e.setBackendError(v)
		case keyIs(k, "content"):
			e.addJSONString(v) // llama.cpp native; a string or nothing
		case keyIs(k, "tokens_evaluated"):
			evaluated = v
		case keyIs(k, "tokens_predicted"):
			predicted = v
		case keyIs(k, "stop_type"):
			stopType = v
		case keyIs(k, "stopped_limit"):
			stoppedLimit = v
		}
	}
	if predicted != nil {
		e.llamacppNative(evaluated, predicted, stopType, stoppedLimit)
	}
	switch string(typ) {
	case `"error"`:
		e.res.BackendError = true
		return
	case `"response.failed"`:
		e.res.BackendError = true
	}
	if typ != nil {
		e.openaiResponsesEvent(typ, delta, response)
		return
	}
	if output != nil {
		e.openaiOutput(output)
		e.setFinish(status)
	}
	e.openaiUsage(usage)
}

func (e *Extractor) openaiChoices(v []byte) {
	choices := arrayElements(v)
	for ch, ok := choices.next(); ok; ch, ok = choices.next() {
		m := objectMembers(ch)
		for k, v, ok := m.next(); ok; k, v, ok = m.next() {
			switch {
			case keyIs(k, "delta"), keyIs(k, "message"):
				e.openaiMessage(v)
			case keyIs(k, "text"):
				e.addJSONString(v)
			case keyIs(k, "finish_reason"):
				e.setFinish(v)
			}
		}
	}
}

func (e *Extractor) openaiMessage(v []byte) {
	m := objectMembers(v)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "content"), keyIs(k, "reasoning_content"), keyIs(k, "reasoning"), keyIs(k, "refusal"):
			e.addJSONString(v)
		case keyIs(k, "tool_calls"):
			calls := arrayElements(v)
			for c, ok := calls.next(); ok; c, ok = calls.next() {
				e.addJSONRaw(member(member(c, "function"), "arguments"))
			}
		}
	}
}

// llamacppNative takes the counts of a llama.cpp native completion: the
// prompt is tokens_evaluated (the whole prompt, cached or not), the
// completion tokens_predicted. stop_type "limit" (stopped_limit in older
// builds) is OpenAI's "length", "eos" and "word" its "stop".
func (e *Extractor) llamacppNative(evaluated, predicted, stopType, stoppedLimit []byte) {
	c, ok := parseCount(predicted)
	if !ok {
		return
	}
	e.res.CompletionTokens, e.res.Found = c, true
	if p, ok := parseCount(evaluated); ok {
		e.res.PromptTokens, e.res.PromptKnown = p, true
	}
	switch {
	case string(stopType) == `"limit"`:
		e.res.FinishReason = "length"
	case string(stopType) == `"eos"`, string(stopType) == `"word"`:
		e.res.FinishReason = "stop"
	case stopType == nil && string(stoppedLimit) == "true":
		e.res.FinishReason = "length"
	case stopType == nil && string(stoppedLimit) == "false":
		e.res.FinishReason = "stop"
	}
}

// openaiResponsesEvent handles a Responses API stream event.
func (e *Extractor) openaiResponsesEvent(typ, delta, response []byte) {
	if bytes.HasSuffix(typ, []byte(`.delta"`)) {
		// response.output_text.delta, response.function_call_arguments.delta,
		// response.reasoning_text.delta, response.refusal.delta, ...
		e.addJSONString(delta)
		return
	}
	if response == nil {
		return
	}
	m := objectMembers(response)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "model"):
			e.setModel(v)
		case keyIs(k, "status"):
			// The status a stream ended with (completed, incomplete,
			// failed); one still under way (response.created's
			// in_progress, queued) says nothing of how it ended.
			if s := string(v); s != `"in_progress"` && s != `"queued"` {
				e.setFinish(v)
			}
		case keyIs(k, "usage"):
			e.openaiUsage(v)
		}
	}
}

// openaiOutput collects text from a non-streamed Responses API "output":
// message items' content[].text and function_call items' arguments.
func (e *Extractor) openaiOutput(v []byte) {
	items := arrayElements(v)
	for it, ok := items.next(); ok; it, ok = items.next() {
		m := objectMembers(it)
		for k, v, ok := m.next(); ok; k, v, ok = m.next() {
			switch {
			case keyIs(k, "content"):
				parts := arrayElements(v)
				for p, ok := parts.next(); ok; p, ok = parts.next() {
					e.addJSONString(member(p, "text"))
				}
			case keyIs(k, "arguments"):
				e.addJSONString(v)
			}
		}
	}
}

// openaiUsage reads both the chat/completions names of the counts and the
// Responses API names.
func (e *Extractor) openaiUsage(v []byte) {
	var prompt, comp, in, out int64
	var hasPrompt, hasComp, hasIn, hasOut bool
	m := objectMembers(v)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "prompt_tokens"):
			prompt, hasPrompt = parseCount(v)
		case keyIs(k, "completion_tokens"):
			comp, hasComp = parseCount(v)
		case keyIs(k, "input_tokens"):
			in, hasIn = parseCount(v)
		case keyIs(k, "output_tokens"):
			out, hasOut = parseCount(v)
		}
	}
	switch {
	case hasPrompt || hasComp:
		e.res.PromptTokens, e.res.CompletionTokens, e.res.PromptKnown = prompt, comp, hasPrompt
		e.promptOnly = !hasComp
	case hasIn || hasOut:
		e.res.PromptTokens, e.res.CompletionTokens, e.res.PromptKnown = in, out, hasIn
		e.promptOnly = !hasOut
	default:
		return
	}
	e.res.Found = true
}

// member returns the raw value of key in obj, or nil.
func member(obj []byte, key string) []byte {
	m := objectMembers(obj)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		if keyIs(k, key) {
			return v
		}
	}
	return nil
}

// IsUsageOnlyChunk reports whether the SSE event ev (as emitted by a
// Splitter) is the OpenAI trailing chunk that stream_options.include_usage
// adds: "choices" is an empty array and "usage" is an object, or null (an
// engine asked for usage that has none to give still sends the chunk). The
// proxy drops it when the client did not ask for usage. Byte checks reject other
// events before any parsing; the function does not allocate for
// single-data-line events.
func IsUsageOnlyChunk(ev []byte) bool {
	if !bytes.Contains(ev, keyUsage) || !emptyChoices(ev) {
		return false
	}
	data, _, ok := sseData(ev, nil)
	if !ok || !jsonscan.Valid(data) {
		return false
	}
	var choices, usage []byte
	m := objectMembers(data)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "choices"):
			choices = v
		case keyIs(k, "usage"):
			usage = v
		}
	}
	if len(choices) == 0 || len(usage) == 0 || (usage[0] != '{' && !bytes.Equal(usage, litNull)) {
		return false
	}
	el := arrayElements(choices)
	_, nonEmpty := el.next()
	return choices[0] == '[' && !nonEmpty
}

// emptyChoices is a byte pre-check for `"choices" : [ ]` anywhere in b.
func emptyChoices(b []byte) bool {
	key := []byte(`"choices"`)
	for {
		i := bytes.Index(b, key)
		if i < 0 {
			return false
		}
		b = b[i+len(key):]
		r := skipSpace(b)
		if len(r) == 0 || r[0] != ':' {
			continue
		}
		r = skipSpace(r[1:])
		if len(r) == 0 || r[0] != '[' {
			continue
		}
		r = skipSpace(r[1:])
		if len(r) > 0 && r[0] == ']' {
			return true
		}
	}
}

func skipSpace(b []byte) []byte {
	return b[skipWS(b, 0):]
}
