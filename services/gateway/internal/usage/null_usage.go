package usage

import "bytes"

var nullUsage = []byte(`"usage":null`)

// StripNullUsage removes the `"usage":null` member that OpenAI-style
// engines add to every chunk of a stream asked for with include_usage, so
// that a client who did not ask sees the chunks the engine would have sent
// it. ev is edited in place and returned; an event without the member is
// returned untouched.
func StripNullUsage(ev []byte) []byte {
	i := bytes.Index(ev, nullUsage)
	if i < 0 {
		return ev
	}
	start, end := i, i+len(nullUsage)
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
