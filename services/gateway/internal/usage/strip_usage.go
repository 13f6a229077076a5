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
	if !ok || !jsonscan.Valid(data) {
		return ev
	}
	if scratch == nil {
		// One data line: data is a part of ev, edited in place.
		off, n := cap(ev)-cap(data), len(data)
		for {
			start, end := usageMember(ev[off : off+n])
			if start < 0 {
				return ev
			}
			ev = append(ev[:off+start], ev[off+end:]...)
			n -= end - start
		}
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
	type member struct{ key, end int } // where its key starts, its value ends
	var list []member
	found, isObject, hasChoices := -1, false, false
	m := objectMembers(data)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyNamed(k, "usage") && (bytes.Equal(v, litNull) || v[0] == '{'):
			found, isObject = len(list), v[0] == '{'
		case keyNamed(k, "choices"):
			hasChoices = true
		}
		list = append(list, member{key: cap(data) - cap(k), end: m.i})
	}
	if found < 0 || (isObject && !hasChoices) {
		return -1, -1
	}
	u := list[found]
	switch {
	case found+1 < len(list):
		return u.key, list[found+1].key
	case found > 0:
		return list[found-1].end, u.end
	}
	return u.key, u.end
}

// rewriteData writes ev anew with data as its data, over as many data lines
// as data has lines; its other lines are kept, before them, and its ending.
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
	return append(out, nl...)
}
