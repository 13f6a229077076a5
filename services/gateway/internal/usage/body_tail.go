package usage

import "bytes"

// BodyTail reads a non-streamed JSON body too large to be kept whole from
// its last bytes, tail: the top-level members of the body that lie whole
// within tail are read as Body reads a body holding just them. That is
// where OpenAI-style engines put "usage" (after the data of an embeddings
// reply or the choices of a long completion) and Ollama its counts. A
// usage that starts before tail is not found. tail is not modified; the
// Extractor copies the members it reads.
func (e *Extractor) BodyTail(tail []byte) {
	defer e.tailFinish(tail)
	i, whole := trailingMembers(tail)
	switch {
	case i < 0:
		return
	case whole:
		e.Body(tail[i:])
		return
	}
	// tail[i] is the comma before the first whole member: the members
	// from there, behind an opening brace, are an object of their own.
	e.scratch = append(append(e.scratch[:0], '{'), tail[i+1:]...)
	e.Body(e.scratch)
}

// tailFinish reads the finish reason from tail when the members read were
// not where it is (a long completion's choices begin before the tail): the
// last "finish_reason" (Anthropic's "stop_reason", Ollama's "done_reason")
// member with a string value. Its quotes are the JSON's own, not a string's
// text: a quote inside a string is escaped, which the backslashes before it
// tell.
func (e *Extractor) tailFinish(tail []byte) {
	if e.res.FinishReason != "" {
		return
	}
	key := []byte(`"finish_reason"`)
	switch e.format.family() {
	case familyAnthropic:
		key = []byte(`"stop_reason"`)
	case familyOllama:
		key = []byte(`"done_reason"`)
	case familyNone:
		return
	}
	for end := len(tail); ; {
		i := bytes.LastIndex(tail[:end], key)
		if i < 0 {
			return
		}
		end = i
		if escaped(tail, i) {
			continue
		}
		v := bytes.TrimLeft(tail[i+len(key):], " \t\r\n")
		if len(v) == 0 || v[0] != ':' {
			continue
		}
		v = bytes.TrimLeft(v[1:], " \t\r\n")
		if len(v) == 0 || v[0] != '"' {
			continue
		}
		j := 1
		for j < len(v) && (v[j] != '"' || escaped(v, j)) {
			j++
		}
		if j < len(v) {
			e.setFinish(v[:j+1])
		}
		return
	}
}

// escaped reports whether the quote at b[i] is escaped: an odd number of
// backslashes before it.
func escaped(b []byte, i int) bool {
	n := 0
	for k := i - 1; k >= 0 && b[k] == '\\'; k-- {
		n++
	}
	return n%2 == 1
}

// trailingMembers scans tail, the last bytes of a JSON object, backwards
// from its closing brace. It returns the index of the comma before the
// earliest top-level member that lies whole within tail, or of the
// object's opening brace (whole true) when tail holds all of it; -1 when
// tail does not end an object or holds no whole member. Strings are
// skipped to their opening quote: a quote is escaped when an odd number of
// backslashes precede it, which can be told looking back.
func trailingMembers(tail []byte) (i int, whole bool) {
	j := len(tail) - 1
	for j >= 0 && isSpace(tail[j]) {
		j--
	}
	if j < 0 || tail[j] != '}' {
		return -1, false
	}
	best, depth := -1, 1
	for j--; j >= 0; j-- {
		switch tail[j] {
		case '"':
			k := openingQuote(tail, j)
			if k < 0 {
				// The string began before tail.
				return best, false
			}
			j = k
		case '}', ']':
			depth++
		case '{', '[':
			depth--
			if depth == 0 {
				return j, true
			}
			if depth < 0 {
				return -1, false
			}
		case ',':
			if depth == 1 {
				best = j
			}
		}
	}
	return best, false
}

// openingQuote returns the index of the quote that opens the string whose
// closing quote is b[j], or -1 when it lies before b (or cannot be told
// from b).
func openingQuote(b []byte, j int) int {
	for k := j - 1; k >= 0; k-- {
		if b[k] != '"' {
			continue
		}
		n := 0
		for k-1-n >= 0 && b[k-1-n] == '\\' {
			n++
		}
		if k-1-n < 0 {
			return -1 // the run of backslashes may go on before b
		}
		if n%2 == 0 {
			return k
		}
	}
	return -1
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
