package usage

import (
	"bytes"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

var usageName = []byte(`"usage"`)

// StripUsage removes the top-level `"usage":null` member that OpenAI-style
// engines add to every chunk of a stream asked for with include_usage (or
// a usage object on a chunk with choices: vLLM's continuous usage, or an
// engine's usage on its finish chunk), so that a client who did not ask
// sees the chunks the engine would have sent it. ev is one SSE event; its
// data is read as JSON, whitespace anywhere (Python's json.dumps writes
// `"usage": null`) and over several data lines, and only its own member
// goes (a "usage" inside a choice stays), with one neighbouring comma. An
// event whose data has no such member, or is not a JSON object, is
// returned untouched; otherwise ev is edited in place and returned (an
// event of several data lines is written anew).
func StripUsage(ev []byte) []byte {
	if !bytes.Contains(ev, usageName) {
		return ev
	}
	data, scratch, ok := sseData(ev, nil)
	if !ok {
		return ev
	}
	if scratch == nil {
		// One data line: data is a part of ev, edited in place.
		off, n := cap(ev)-cap(data), len(data)
		if start, end := lastNullUsage(data); start >= 0 {
			// The common case, read without walking the chunk.
			ev = append(ev[:off+start], ev[off+end:]...)
			n -= end - start
			if !bytes.Contains(ev[off:off+n], usageName) {
				return ev
			}
		}
		if !jsonscan.Valid(ev[off : off+n]) {
			return ev
		}
		for {
			start, end := usageMember(ev[off : off+n])
			if start < 0 {
				return ev
			}
			ev = append(ev[:off+start], ev[off+end:]...)
			n -= end - start
		}
	}
	if !jsonscan.Valid(data) {
		return ev
	}
	stripped := false
	for {
		start, end := usageMember(data)
		if start < 0 {
			break
		}
		data, stripped = append(data[:start:start], data[end:]...), true
	}
	if !stripped {
		return ev
	}
	return rewriteData(ev, data)
}

// usageMember returns where the top-level "usage" member of the JSON object
// data starts and ends, taking one neighbouring comma (and the whitespace
// up to the next member) with it; -1 when it has none to strip: none, or a
// usage that is neither null nor an object beside a "choices" member.
func usageMember(data []byte) (start, end int) {
	found, isObject, hasChoices := false, false, false
	var key, valEnd, prevEnd, nextKey int // the found member's; the ends of its neighbours
	prevEnd, nextKey = -1, -1
	last := -1 // the end of the member before the current one
	m := objectMembers(data)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		at := cap(data) - cap(k)
		if found && nextKey < 0 {
			nextKey = at
		}
		switch {
		case keyNamed(k, "usage") && (bytes.Equal(v, litNull) || v[0] == '{'):
			// A repeated one: this one now, the caller comes back for
			// the others.
			found, isObject, key, valEnd, prevEnd, nextKey = true, v[0] == '{', at, m.i, last, -1
		case keyNamed(k, "choices"):
			hasChoices = true
		}
		last = m.i
	}
	if !found || (isObject && !hasChoices) {
		return -1, -1
	}
	switch {
	case nextKey >= 0:
		return key, nextKey
	case prevEnd >= 0:
		return prevEnd, valEnd
	}
	return key, valEnd
}

// lastNullUsage finds the member most engines end every chunk with: data
// (an object on one line) ending `, "usage" : null }` and whitespace, a
// member of the object itself since the brace after it is the last byte
// that is not whitespace. It returns where the member and the comma before
// it start and end, or -1 when data does not end so.
func lastNullUsage(data []byte) (start, end int) {
	// before returns the index of the last byte before i that is not
	// whitespace, -1 when there is none.
	before := func(i int) int {
		for i >= 0 && isSpace(data[i]) {
			i--
		}
		return i
	}
	i := before(len(data) - 1)
	if i < 0 || data[i] != '}' {
		return -1, -1
	}
	if i = before(i - 1); i < 3 || string(data[i-3:i+1]) != "null" {
		return -1, -1
	}
	end = i + 1
	if i = before(i - 4); i < 0 || data[i] != ':' {
		return -1, -1
	}
	if i = before(i - 1); i < len(usageName)-1 || !bytes.Equal(data[i-len(usageName)+1:i+1], usageName) {
		return -1, -1
	}
	i -= len(usageName)
	if i >= 0 && data[i] == '\\' {
		return -1, -1 // the quote is escaped: not a name
	}
	if i = before(i); i < 0 || data[i] != ',' {
		return -1, -1
	}
	return i, end
}

// rewriteData writes ev anew with data as its data, over as many data lines
// as data has lines; its other lines are kept, before them, and its ending
// (a last CRLF's CR alone, where a read cut the LF off).
func rewriteData(ev, data []byte) []byte {
	nl := []byte("\n")
	if i := bytes.IndexAny(ev, "\r\n"); i >= 0 && ev[i] == '\r' {
		nl = []byte("\r\n")
		if i+1 >= len(ev) || ev[i+1] != '\n' {
			nl = []byte("\r")
		}
	}
	out := make([]byte, 0, len(ev)+8)
	for rest := ev; len(rest) > 0; {
		i := nextTerminator(rest)
		line := rest[:i]
		if i < len(rest) {
			if rest[i] == '\r' && i+1 < len(rest) && rest[i+1] == '\n' {
				i++
			}
			rest = rest[i+1:]
		} else {
			rest = nil
		}
		if len(line) == 0 || (bytes.HasPrefix(line, []byte("data")) && (len(line) == 4 || line[4] == ':')) {
			continue
		}
		out = append(append(out, line...), nl...)
	}
	for first := true; first || len(data) > 0; first = false {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		out = append(append(append(out, "data: "...), line...), nl...)
	}
	if len(nl) == 2 && ev[len(ev)-1] == '\r' {
		// A CRLF event whose last LF a read cut off (see Splitter): the
		// relay sends that LF after it, as its own piece.
		return append(out, '\r')
	}
	return append(out, nl...)
}
