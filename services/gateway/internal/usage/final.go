package usage

import "bytes"

// IsFinalEvent reports whether ev is the event that ends a stream of format
// f: OpenAI's `data: [DONE]` (and the Responses API's response.completed),
// Anthropic's message_stop, Ollama's line with "done":true, TGI's event
// carrying the whole generated_text. All usage of the stream is known once
// it has been seen.
func IsFinalEvent(f Format, ev []byte) bool {
	switch f {
	case FormatOpenAISSE:
		return bytes.Contains(ev, []byte("[DONE]")) && isDoneData(ev) || bytes.Contains(ev, []byte("response.completed"))
	case FormatAnthropicSSE:
		return bytes.Contains(ev, []byte("message_stop"))
	case FormatOllamaNDJSON:
		return bytes.Contains(ev, []byte(`"done":true`))
	case FormatTGISSE:
		return bytes.Contains(ev, []byte(`"generated_text":"`))
	}
	return false
}

// isDoneData reports whether ev's data is exactly [DONE].
func isDoneData(ev []byte) bool {
	for _, line := range bytes.Split(ev, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if d, ok := bytes.CutPrefix(line, []byte("data:")); ok && string(bytes.TrimSpace(d)) == "[DONE]" {
			return true
		}
	}
	return false
}
