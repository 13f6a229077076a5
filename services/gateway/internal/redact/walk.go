package redact

import (
	"bytes"
	"encoding/json"
	"sync"
	"unicode/utf8"
)

func validJSON(b []byte) bool { return json.Valid(b) }

// walker rewrites one valid JSON document in a single pass. It copies the
// input lazily: out stays nil until the first replacement, so a document
// that no rule touches costs no allocation. It must only be given input
// that json.Valid accepts.
type walker struct {
	r    *Redactor
	in   []byte
	out  []byte // nil until something is replaced
	last int    // in[:last] has been accounted for in out
	path []segment
}

// walkers keeps walkers, and their path stacks, between calls so that a
// document no rule touches costs no allocation.
var walkers = sync.Pool{New: func() any { return &walker{path: make([]segment, 0, 32)} }}

// release clears w (it must not keep a body alive) and returns it to the
// pool.
func (w *walker) release() {
	clear(w.path[:cap(w.path)])
	*w = walker{path: w.path[:0]}
	walkers.Put(w)
}

// replace substitutes in[from:to] with repl.
func (w *walker) replace(from, to int, repl []byte) {
	if w.out == nil {
		w.out = make([]byte, 0, len(w.in)+len(repl))
	}
	w.out = append(w.out, w.in[w.last:from]...)
	w.out = append(w.out, repl...)
	w.last = to
}

func (w *walker) ws(i int) int {
	for i < len(w.in) {
		switch w.in[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

func (w *walker) selected() bool {
	for _, p := range w.r.paths {
		if p.match(w.path) {
			return true
		}
	}
	return false
}

// value handles the value starting at in[i] and returns the offset after it.
func (w *walker) value(i int) int {
	if len(w.r.paths) > 0 && w.selected() {
		end := w.skip(i)
		w.replace(i, end, quotedPlaceholder)
		return end
	}
	switch w.in[i] {
	case '{':
		return w.object(i)
	case '[':
		return w.array(i)
	case '"':
		end := w.skipString(i)
		if len(w.r.regexps) > 0 {
			w.redactString(i, end)
		}
		return end
	default:
		return w.skipLiteral(i)
	}
}

func (w *walker) object(i int) int {
	i = w.ws(i + 1)
	if w.in[i] == '}' {
		return i + 1
	}
	for {
		kend := w.skipString(i)
		key := w.in[i+1 : kend-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var s string
			_ = json.Unmarshal(w.in[i:kend], &s)
			key = []byte(s)
		}
		w.path = append(w.path, segment{key: key, isKey: true})
		i = w.ws(kend)
		i = w.ws(i + 1) // ':'
		i = w.value(i)
		w.path = w.path[:len(w.path)-1]
		i = w.ws(i)
		if w.in[i] == '}' {
			return i + 1
		}
		i = w.ws(i + 1) // ','
	}
}

func (w *walker) array(i int) int {
	i = w.ws(i + 1)
	if w.in[i] == ']' {
		return i + 1
	}
	for n := 0; ; n++ {
		w.path = append(w.path, segment{index: n})
		i = w.value(i)
		w.path = w.path[:len(w.path)-1]
		i = w.ws(i)
		if w.in[i] == ']' {
			return i + 1
		}
		i = w.ws(i + 1) // ','
	}
}

// redactString applies the regular expressions to the string in[from:to]
// (quotes included).
func (w *walker) redactString(from, to int) {
	raw := w.in[from+1 : to-1]
	if bytes.IndexByte(raw, '\\') < 0 {
		// No escapes: the raw bytes are the value.
		matched := false
		for _, re := range w.r.regexps {
			if re.Match(raw) {
				matched = true
				break
			}
		}
		if !matched {
			return
		}
		w.replace(from, to, appendString(nil, w.r.Text(string(raw))))
		return
	}
	var s string
	if err := json.Unmarshal(w.in[from:to], &s); err != nil {
		return
	}
	if red := w.r.Text(s); red != s {
		w.replace(from, to, appendString(nil, red))
	}
}

// skip returns the offset after the value at in[i].
func (w *walker) skip(i int) int {
	switch w.in[i] {
	case '"':
		return w.skipString(i)
	case '{', '[':
		depth := 0
		for i < len(w.in) {
			switch w.in[i] {
			case '"':
				i = w.skipString(i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default:
		return w.skipLiteral(i)
	}
}

func (w *walker) skipString(i int) int {
	j := i + 1
	for j < len(w.in) && w.in[j] != '"' {
		if w.in[j] == '\\' {
			j++
		}
		j++
	}
	return j + 1
}

func (w *walker) skipLiteral(i int) int {
	for i < len(w.in) {
		switch w.in[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

const hex = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as encoding/json does; HTML characters are left alone.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}
