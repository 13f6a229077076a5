package usage

// anthropic reads a /v1/messages body or one stream event: message_start
// (message.model, message.usage), content_block_start, content_block_delta
// (text_delta, input_json_delta, thinking_delta) and message_delta
// (delta.stop_reason, usage.output_tokens).
func (e *Extractor) anthropic(obj []byte) {
	var typ, model, stopReason, usage, content, message, block, delta []byte
	m := objectMembers(obj)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "type"):
			typ = v
		case keyIs(k, "delta"):
			delta = v
		case keyIs(k, "content_block"):
			block = v
		case keyIs(k, "message"):
			message = v
		case keyIs(k, "usage"):
			usage = v
		case keyIs(k, "model"):
			model = v
		case keyIs(k, "stop_reason"):
			stopReason = v
		case keyIs(k, "content"):
			content = v
		}
	}
	switch string(typ) {
	case `"error"`:
		e.res.BackendError = true
	case `"content_block_delta"`:
		m := objectMembers(delta)
		for k, v, ok := m.next(); ok; k, v, ok = m.next() {
			if keyIs(k, "text") || keyIs(k, "thinking") || keyIs(k, "partial_json") {
				e.addJSONString(v)
			}
		}
	case `"content_block_start"`:
		// Blocks start empty in practice (tool_use with "input":{}); keep
		// whatever else they carry.
		e.anthropicBlock(block, true)
	case `"message_start"`:
		e.setModel(member(message, "model"))
		// output_tokens here is a running count at the start; the final
		// count comes with message_delta, so only the prompt is taken.
		e.anthropicUsage(member(message, "usage"), false)
	case `"message_delta"`:
		e.setFinish(member(delta, "stop_reason"))
		e.anthropicUsage(usage, true)
	case `"message"`:
		e.setModel(model)
		blocks := arrayElements(content)
		for b, ok := blocks.next(); ok; b, ok = blocks.next() {
			e.anthropicBlock(b, false)
		}
		e.setFinish(stopReason)
		e.anthropicUsage(usage, true)
	case "":
		// The last members of a message too large to keep whole
		// (BodyTail): its "type" came first and is not among them, but its
		// usage, stop reason and model come last.
		if e.format == FormatAnthropicJSON && usage != nil {
			e.setModel(model)
			e.setFinish(stopReason)
			e.anthropicUsage(usage, true)
		}
	}
}

func (e *Extractor) anthropicBlock(b []byte, start bool) {
	m := objectMembers(b)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "text"), keyIs(k, "thinking"):
			e.addJSONString(v)
		case keyIs(k, "input"):
			if !start || string(v) != "{}" {
				e.addJSONRaw(v)
			}
		}
	}
}

// anthropicUsage: the prompt is input_tokens plus the cache write and read
// tokens, which Anthropic counts apart from input_tokens. Newer API versions
// repeat the input counts in message_delta; counts there are cumulative, and
// a count a message_delta leaves out or sends as null is unchanged (as the
// SDKs accumulate them), so a cache count from message_start is kept when a
// later event repeats only input_tokens. Older versions send only
// output_tokens there.
func (e *Extractor) anthropicUsage(v []byte, final bool) {
	var out int64
	var hasIn, hasOut bool
	m := objectMembers(v)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		var n int64
		var has bool
		switch {
		case keyIs(k, "input_tokens"):
			if n, has = parseCount(v); has {
				e.antIn, hasIn = n, true
			}
		case keyIs(k, "cache_creation_input_tokens"):
			if n, has = parseCount(v); has {
				e.antCacheWrite = n
			}
		case keyIs(k, "cache_read_input_tokens"):
			if n, has = parseCount(v); has {
				e.antCacheRead = n
			}
		case keyIs(k, "output_tokens"):
			out, hasOut = parseCount(v)
		}
	}
	if hasIn {
		e.res.PromptTokens = e.antIn + e.antCacheWrite + e.antCacheRead
		e.res.PromptKnown = true
	}
	if final && hasOut {
		e.res.CompletionTokens = out
		e.res.Found = true
	}
}
