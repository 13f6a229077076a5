package usage

import (
	"bytes"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

// isJSONString reports whether raw (a value json.Unmarshal already checked)
// is a string.
func isJSONString(raw []byte) bool {
	return len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"'
}

// isNullOrEmpty reports whether a raw JSON value is absent or null.
func isNullOrEmpty(raw []byte) bool {
	return len(raw) == 0 || bytes.Equal(raw, litNull)
}

var (
	litNull  = []byte("null")
	litTrue  = []byte("true")
	litDone  = []byte("[DONE]")
	keyUsage = []byte(`"usage"`)
)

// appendUnquoted appends the decoded contents of the JSON string raw to dst.
// raw must be a valid JSON string literal (json.Unmarshal has seen it);
// anything else appends nothing.
func appendUnquoted(dst, raw []byte) []byte {
	if !isJSONString(raw) {
		return dst
	}
	s := raw[1 : len(raw)-1]
	for len(s) > 0 {
		j := bytes.IndexByte(s, '\\')
		if j < 0 {
			return append(dst, s...)
		}
		dst = append(dst, s[:j]...)
		s = s[j:]
		if len(s) < 2 {
			return dst
		}
		switch s[1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, n := jsonscan.DecodeU(s)
			dst = utf8.AppendRune(dst, r)
			s = s[n:]
			continue
		default: // '"', '\\', '/'
			dst = append(dst, s[1])
		}
		s = s[2:]
	}
	return dst
}

// sseData returns the data of an SSE event: the values of its "data:" lines
// (one leading space removed) joined by "\n". A single data line is returned
// as a subslice of ev; several are joined into scratch, which is returned for
// reuse. Comment lines and other fields are skipped.
func sseData(ev, scratch []byte) (data, newScratch []byte, ok bool) {
	lines := 0
	for len(ev) > 0 {
		i := nextTerminator(ev)
		var line []byte
		if i == len(ev) {
			line, ev = ev, nil
		} else {
			line = ev[:i]
			if ev[i] == '\r' && i+1 < len(ev) && ev[i+1] == '\n' {
				i++
			}
			ev = ev[i+1:]
		}
		if !bytes.HasPrefix(line, []byte("data")) {
			continue
		}
		v := line[4:]
		if len(v) > 0 {
			if v[0] != ':' {
				continue // a field such as "dataX"
			}
			v = v[1:]
			if len(v) > 0 && v[0] == ' ' {
				v = v[1:]
			}
		}
		switch lines {
		case 0:
			data = v
		case 1:
			scratch = append(append(append(scratch[:0], data...), '\n'), v...)
			data = scratch
		default:
			scratch = append(append(scratch, '\n'), v...)
			data = scratch
		}
		lines++
	}
	return data, scratch, lines > 0
}
