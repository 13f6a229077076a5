package usage

import "bytes"

var usageName, choicesName = []byte(`"usage"`), []byte(`"choices"`)

// StripUsage removes the `"usage":null` member that OpenAI-style
// engines add to every chunk of a stream asked for with include_usage (or
// a usage object on a chunk with choices: vLLM's continuous usage, or an
// engine's usage on its finish chunk), so that a client who did not ask
// sees the chunks the engine would have sent it. The member may have spaces
// around its colon (Python's json.dumps writes `"usage": null`). ev is edited in place and returned; an event
// without the member is returned untouched.
func StripUsage(ev []byte) []byte {
	i, end := usageMember(ev)
	if i < 0 {
		return ev
	}
	start := i
	// Take one neighbouring comma (and the spaces around it) with it.
	j := end
	for j < len(ev) && (ev[j] == ' ' || ev[j] == '\t') {
		j++
	}
	if j < len(ev) && ev[j] == ',' {
		end = j + 1
		for end < len(ev) && (ev[end] == ' ' || ev[end] == '\t') {
			end++
		}
	} else {
		k := start - 1
		for k >= 0 && (ev[k] == ' ' || ev[k] == '\t') {
			k--
		}
		if k >= 0 && ev[k] == ',' {
			start = k
		}
	}
	return append(ev[:start], ev[end:]...)
}

// usageMember finds a `"usage"` name followed by a colon and null (or
// an object),
// with optional JSON whitespace between them, and returns where the member
// starts and ends; -1 when ev has none. A string value is never followed
// by a colon, and a quote escaped inside a name starts nothing.
func usageMember(ev []byte) (start, end int) {
	for off := 0; ; {
		i := bytes.Index(ev[off:], usageName)
		if i < 0 {
			return -1, -1
		}
		i += off
		bs := 0 // backslashes before the quote: odd, it is escaped
		for k := i - 1; k >= 0 && ev[k] == '\\'; k-- {
			bs++
		}
		j := skipWS(ev, i+len(usageName))
		if bs%2 == 0 && j < len(ev) && ev[j] == ':' {
			j = skipWS(ev, j+1)
			end := -1
			switch {
			case bytes.HasPrefix(ev[j:], []byte("null")):
				end = j + len("null")
			case j < len(ev) && ev[j] == '{' && bytes.Contains(ev, choicesName):
				// A usage object on a chunk that carries choices: an
				// engine's continuous usage (vLLM's
				// continuous_usage_stats), or its usage on the finish
				// chunk; neither reaches a client that did not ask.
				end = valueEnd(ev, j)
			}
			if end > 0 {
				if k := skipWS(ev, end); k < len(ev) && (ev[k] == ',' || ev[k] == '}') {
					return i, end
				}
			}
		}
		off = i + len(usageName)
	}
}
