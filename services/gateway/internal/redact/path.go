package redact

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// path is a compiled JSON path: a list of steps from the root.
type path []step

// step selects children of a value. A descend step (from "..") may skip
// any number of levels before it matches.
type step struct {
	descend bool
	any     bool   // "*" or "[*]": any member or element
	name    []byte // a member name, when !any and index < 0
	index   int    // an array index, or -1
}

// segment is one level of the current location in a document: a member
// name (isKey) or an array index.
type segment struct {
	key   []byte
	index int
	isKey bool
}

func (s step) matches(seg segment) bool {
	switch {
	case s.any:
		return true
	case s.index >= 0:
		return !seg.isKey && seg.index == s.index
	default:
		return seg.isKey && bytes.Equal(seg.key, s.name)
	}
}

// match reports whether p selects exactly the location segs.
func (p path) match(segs []segment) bool {
	if len(p) == 0 {
		return len(segs) == 0
	}
	s := p[0]
	if !s.descend {
		return len(segs) > 0 && s.matches(segs[0]) && p[1:].match(segs[1:])
	}
	for k := range segs {
		if s.matches(segs[k]) && p[1:].match(segs[k+1:]) {
			return true
		}
	}
	return false
}

// parsePath parses "$", "$.a.b", "$.a[*].b", "$.a[0]", "$['a b']", "$.*"
// and "$..a".
func parsePath(s string) (path, error) {
	if s == "" || s[0] != '$' {
		return nil, errors.New("a JSON path starts with $")
	}
	var p path
	i := 1
	for i < len(s) {
		var st step
		st.index = -1
		switch {
		case s[i] == '.':
			i++
			if i < len(s) && s[i] == '.' {
				st.descend = true
				i++
			}
			if i < len(s) && s[i] == '[' {
				if !st.descend {
					return nil, fmt.Errorf("unexpected [ after . at offset %d", i)
				}
				n, err := parseBracket(s, i, &st)
				if err != nil {
					return nil, err
				}
				i = n
				break
			}
			j := i
			for j < len(s) && s[j] != '.' && s[j] != '[' {
				j++
			}
			if j == i {
				return nil, fmt.Errorf("empty member name at offset %d", i)
			}
			if s[i:j] == "*" {
				st.any = true
			} else {
				st.name = []byte(s[i:j])
			}
			i = j
		case s[i] == '[':
			n, err := parseBracket(s, i, &st)
			if err != nil {
				return nil, err
			}
			i = n
		default:
			return nil, fmt.Errorf("unexpected %q at offset %d", s[i], i)
		}
		p = append(p, st)
	}
	return p, nil
}

// parseBracket parses "[*]", "[N]", "['name']" or `["name"]` at s[i] and
// returns the offset after it.
func parseBracket(s string, i int, st *step) (int, error) {
	end := i + 1
	if end < len(s) && (s[end] == '\'' || s[end] == '"') {
		q := s[end]
		j := end + 1
		for j < len(s) && s[j] != q {
			j++
		}
		if j+1 >= len(s) || s[j+1] != ']' {
			return 0, fmt.Errorf("unterminated [%c at offset %d", q, i)
		}
		st.name = []byte(s[end+1 : j])
		return j + 2, nil
	}
	for end < len(s) && s[end] != ']' {
		end++
	}
	if end >= len(s) {
		return 0, fmt.Errorf("unterminated [ at offset %d", i)
	}
	inner := s[i+1 : end]
	if inner == "*" {
		st.any = true
		return end + 1, nil
	}
	n, err := strconv.Atoi(inner)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad index [%s] at offset %d (want [*], [N] or ['name'])", inner, i)
	}
	st.index = n
	return end + 1, nil
}
