package usage

import "bytes"

// IsFinalEvent reports whether ev is the event that ends a stream of format
// f: OpenAI's `data: [DONE]` (and the Responses API's response.completed,
// response.incomplete or response.failed, and llama.cpp's native
// completion event with "stop":true, whose stream has no [DONE]), Anthropic's message_stop,
// Ollama's line with "done":true, TGI's event carrying the whole
// generated_text. All usage of the stream is known once it has been seen.
//
// Only the event's structure counts: its SSE "event:" field, a data of
// exactly [DONE], or a top-level member of its JSON ("type", "done",
// "generated_text"). The same words inside generated text never end a
// stream. Events that cannot be final are turned away by one substring
// search; IsFinalEvent does not allocate for events with one data line.
func IsFinalEvent(f Format, ev []byte) bool {
	switch f {
	case FormatOpenAISSE:
		if bytes.Contains(ev, litDone) && isDoneData(ev) {
			return true
		}
		if bytes.Contains(ev, litTrue) && bytes.Contains(ev, keyStop) {
			if data, ok := eventData(ev); ok && bytes.Equal(member(data, "stop"), litTrue) {
				return true
			}
		}
		return bytes.Contains(ev, responsesTypePrefix) && sseTypeIs(ev, responsesFinal...)
	case FormatAnthropicSSE:
		return bytes.Contains(ev, anthropicFinal) && sseTypeIs(ev, anthropicFinal)
	case FormatOllamaNDJSON:
		return bytes.Contains(ev, litTrue) && bytes.Equal(member(ev, "done"), litTrue)
	case FormatTGISSE:
		if !bytes.Contains(ev, keyGeneratedText) {
			return false
		}
		data, ok := eventData(ev)
		if !ok {
			return false
		}
		v := member(data, "generated_text")
		return len(v) >= 2 && v[0] == '"'
	}
	return false
}

var (
	responsesTypePrefix = []byte("response.")
	responsesFinal      = [][]byte{[]byte("response.completed"), []byte("response.incomplete"), []byte("response.failed")}
	anthropicFinal      = []byte("message_stop")
	keyGeneratedText    = []byte("generated_text")
	keyStop             = []byte(`"stop"`)
)

// isDoneData reports whether ev's data is exactly [DONE].
func isDoneData(ev []byte) bool {
	data, ok := eventData(ev)
	return ok && bytes.Equal(bytes.TrimSpace(data), litDone)
}

// sseTypeIs reports whether the SSE event ev is of one of the types names:
// its "event:" field names it, or its data is a JSON object whose top-level
// "type" is that string.
func sseTypeIs(ev []byte, names ...[]byte) bool {
	if name, ok := sseField(ev, "event"); ok {
		for _, n := range names {
			if bytes.Equal(bytes.TrimSpace(name), n) {
				return true
			}
		}
	}
	data, ok := eventData(ev)
	if !ok {
		return false
	}
	typ := member(data, "type")
	if len(typ) < 2 || typ[0] != '"' {
		return false
	}
	typ = typ[1 : len(typ)-1]
	for _, n := range names {
		if bytes.Equal(typ, n) {
			return true
		}
	}
	return false
}

// eventData returns the data of the SSE event ev. An event with one data
// line (every engine's) is answered without allocating; several are joined.
func eventData(ev []byte) ([]byte, bool) {
	data, lines := []byte(nil), 0
	forEachLine(ev, func(line []byte) bool {
		if v, ok := fieldValue(line, "data"); ok {
			data = v
			lines++
		}
		return lines < 2
	})
	if lines > 1 {
		data, _, _ = sseData(ev, nil)
	}
	return data, lines > 0
}

// sseField returns the value of the first field called name in the SSE
// event ev.
func sseField(ev []byte, name string) (val []byte, found bool) {
	forEachLine(ev, func(line []byte) bool {
		val, found = fieldValue(line, name)
		return !found
	})
	return val, found
}

// fieldValue returns the value of line when it is the SSE field name (one
// space after the colon removed).
func fieldValue(line []byte, name string) ([]byte, bool) {
	if len(line) <= len(name) || string(line[:len(name)]) != name || line[len(name)] != ':' {
		return nil, false
	}
	v := line[len(name)+1:]
	if len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	return v, true
}

// forEachLine calls fn with each line of ev (without its terminator) until
// fn returns false.
func forEachLine(ev []byte, fn func(line []byte) bool) {
	for len(ev) > 0 {
		i := nextTerminator(ev)
		line := ev[:i]
		if i < len(ev) {
			if ev[i] == '\r' && i+1 < len(ev) && ev[i+1] == '\n' {
				i++
			}
			i++
		}
		ev = ev[i:]
		if !fn(line) {
			return
		}
	}
}
