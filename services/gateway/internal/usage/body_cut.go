package usage

import "unicode/utf8"

// BodyCut reads the text of a non-streamed JSON reply the backend broke
// off, head being the bytes that arrived: such a body does not parse, and
// its usage (at its end, if anywhere) never came, but its text did and
// was delivered. The string values of the members that hold generated
// text in the formats read here ("content", "text", "response",
// "generated_text", "thinking", "reasoning_content", "arguments") are
// added to the text, the last one as far as it arrived, so that the
// estimate bills what the client got. Nothing else is read: the scan is
// lenient (it does not check the JSON) and knows no nesting.
func (e *Extractor) BodyCut(head []byte) {
	var key []byte
	for i := 0; i < len(head); i++ {
		switch head[i] {
		case '"':
			j := i + 1
			for j < len(head) && head[j] != '"' {
				if head[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(head) {
				// The string the body was cut in.
				if isTextKey(key) {
					e.scratch = append(append(e.scratch[:0], completeEscapes(head[i:])...), '"')
					e.addJSONString(e.scratch)
				}
				return
			}
			k := j + 1
			for k < len(head) && isSpace(head[k]) {
				k++
			}
			if k < len(head) && head[k] == ':' {
				key, i = head[i+1:j], k
				continue
			}
			if isTextKey(key) {
				e.addJSONString(head[i : j+1])
			}
			key, i = nil, j
		case '{', '}', ',', ']':
			key = nil
		}
	}
}

// isTextKey reports whether a member of this name holds generated text.
func isTextKey(k []byte) bool {
	switch string(k) {
	case "content", "text", "response", "generated_text", "thinking", "reasoning_content", "arguments":
		return true
	}
	return false
}

// completeEscapes returns s, the start of a JSON string cut short (its
// opening quote and what followed), without an escape or a UTF-8 sequence
// the cut left unfinished, so that closing it makes a string.
func completeEscapes(s []byte) []byte {
	for i := 1; i < len(s); {
		if s[i] != '\\' {
			i++
			continue
		}
		need := 2
		if i+1 < len(s) && s[i+1] == 'u' {
			need = 6
		}
		if i+need > len(s) {
			return s[:i]
		}
		i += need
	}
	for n := 1; n <= utf8.UTFMax && n < len(s); n++ {
		if utf8.RuneStart(s[len(s)-n]) {
			if !utf8.FullRune(s[len(s)-n:]) {
				return s[:len(s)-n]
			}
			break
		}
	}
	return s
}
