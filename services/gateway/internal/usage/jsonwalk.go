package usage

import (
	"bytes"
	"math"
	"strconv"
)

// A small allocation-free walk over JSON that jsonscan.Valid has checked
// (json.Unmarshal would allocate on every object). Values are returned as
// raw subslices of the input; keys are compared raw, quotes included, which
// is exact for the plain ASCII keys the engines send.

// members iterates the members of a JSON object.
type members struct {
	b    []byte
	i    int
	done bool
}

// objectMembers starts an iteration over v; a v that is not an object
// yields nothing.
func objectMembers(v []byte) members {
	i := skipWS(v, 0)
	if i >= len(v) || v[i] != '{' {
		return members{done: true}
	}
	return members{b: v, i: i + 1}
}

// next returns the raw key (with its quotes) and raw value of the next
// member.
func (m *members) next() (key, val []byte, ok bool) {
	if m.done {
		return nil, nil, false
	}
	b := m.b
	i := skipWS(b, m.i)
	if i < len(b) && b[i] == ',' {
		i = skipWS(b, i+1)
	}
	if i >= len(b) || b[i] != '"' {
		m.done = true
		return nil, nil, false
	}
	ke := valueEnd(b, i)
	if ke < 0 {
		m.done = true
		return nil, nil, false
	}
	key = b[i:ke]
	i = skipWS(b, ke)
	if i >= len(b) || b[i] != ':' {
		m.done = true
		return nil, nil, false
	}
	i = skipWS(b, i+1)
	ve := valueEnd(b, i)
	if ve < 0 {
		m.done = true
		return nil, nil, false
	}
	m.i = ve
	return key, b[i:ve], true
}

// elements iterates the elements of a JSON array.
type elements struct {
	b    []byte
	i    int
	done bool
}

// arrayElements starts an iteration over v; a v that is not an array yields
// nothing.
func arrayElements(v []byte) elements {
	i := skipWS(v, 0)
	if i >= len(v) || v[i] != '[' {
		return elements{done: true}
	}
	return elements{b: v, i: i + 1}
}

func (e *elements) next() (val []byte, ok bool) {
	if e.done {
		return nil, false
	}
	b := e.b
	i := skipWS(b, e.i)
	if i < len(b) && b[i] == ',' {
		i = skipWS(b, i+1)
	}
	if i >= len(b) || b[i] == ']' {
		e.done = true
		return nil, false
	}
	ve := valueEnd(b, i)
	if ve < 0 {
		e.done = true
		return nil, false
	}
	e.i = ve
	return b[i:ve], true
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// valueEnd returns the index just past the JSON value starting at b[i], or
// -1 if it does not end inside b. Containers are skipped iteratively, so deep
// nesting cannot exhaust the stack.
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
				if i < 0 {
					return -1
				}
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
		return -1
	}
	// number, true, false, null
	j := i
	for j < len(b) {
		switch b[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return j
		}
		j++
	}
	return j
}

// stringEnd returns the index just past the string starting at b[i].
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// parseCount reads a non-negative JSON integer, or a whole number written
// as a JSON fraction or exponent (70.0, 7e1: an engine of one's own that
// counts in floats); ok is false for anything else (null, strings, other
// fractions, negative numbers, overflow).
func parseCount(raw []byte) (n int64, ok bool) {
	if len(raw) == 0 || len(raw) > 18 {
		return 0, false
	}
	for _, c := range raw {
		if c < '0' || c > '9' {
			return parseWholeFloat(raw)
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseWholeFloat reads a JSON number with a fraction or exponent whose
// value is a whole number from 0 to 10^17.
func parseWholeFloat(raw []byte) (int64, bool) {
	if raw[0] < '0' || raw[0] > '9' || !bytes.ContainsAny(raw, ".eE") {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || f != math.Trunc(f) || f < 0 || f > 1e17 {
		return 0, false
	}
	return int64(f), true
}

// keyIs compares a raw key (quotes included) with name.
func keyIs(key []byte, name string) bool {
	return len(key) == len(name)+2 && string(key[1:len(key)-1]) == name
}
