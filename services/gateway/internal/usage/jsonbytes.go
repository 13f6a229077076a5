package usage

import (
	"bytes"
	"unicode/utf16"
	"unicode/utf8"
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
			r, n := decodeU(s)
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

// decodeU decodes a \uXXXX escape (and its low surrogate, if any) at the
// start of s, returning the rune and the bytes consumed.
func decodeU(s []byte) (rune, int) {
	r := hex4(s[2:])
	if r < 0 {
		return utf8.RuneError, min(len(s), 2)
	}
	if utf16.IsSurrogate(r) {
		if len(s) >= 12 && s[6] == '\\' && s[7] == 'u' {
			if r2 := hex4(s[8:]); r2 >= 0 {
				if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
					return d, 12
				}
			}
		}
		return utf8.RuneError, 6
	}
	return r, 6
}

func hex4(s []byte) rune {
	if len(s) < 4 {
		return -1
	}
	var r rune
	for _, c := range s[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
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
