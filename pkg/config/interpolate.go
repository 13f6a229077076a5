package config

import "strings"

// interpolate replaces ${VAR} and ${VAR:-default} in text with values from
// lookup. It works on the raw file so that line numbers in later errors stay
// right. "$${" writes a literal "${". An unset variable without a default
// becomes empty; ${VAR:-default} also uses the default when VAR is set but
// empty, as a shell does. The default may itself contain ${…}. Anything that
// does not look like a reference (no closing brace, a name that is not
// [A-Za-z_][A-Za-z0-9_]*) is kept as written.
//
// The value is pasted into the YAML text as is: quote the YAML scalar when a
// value may hold characters such as '#' or ": ".
func interpolate(text string, lookup func(string) (string, bool)) string {
	if !strings.Contains(text, "${") {
		return text
	}
	var b strings.Builder
	b.Grow(len(text))
	for i := 0; i < len(text); {
		if strings.HasPrefix(text[i:], "$${") {
			b.WriteString("${")
			i += 3
			continue
		}
		if !strings.HasPrefix(text[i:], "${") {
			b.WriteByte(text[i])
			i++
			continue
		}
		val, n, ok := reference(text[i:], lookup)
		if !ok {
			b.WriteString("${")
			i += 2
			continue
		}
		b.WriteString(val)
		i += n
	}
	return b.String()
}

// reference expands the reference at the start of s ("${…}") and reports
// how many bytes it spans.
func reference(s string, lookup func(string) (string, bool)) (val string, n int, ok bool) {
	i := 2
	for i < len(s) && isNameByte(s[i], i == 2) {
		i++
	}
	name := s[2:i]
	if name == "" || i >= len(s) {
		return "", 0, false
	}
	if s[i] == '}' {
		v, _ := lookup(name)
		return v, i + 1, true
	}
	if !strings.HasPrefix(s[i:], ":-") {
		return "", 0, false
	}
	start := i + 2
	depth := 0
	for j := start; j < len(s); j++ {
		switch {
		case strings.HasPrefix(s[j:], "$${"):
			j += 2
		case strings.HasPrefix(s[j:], "${"):
			depth++
			j++
		case s[j] == '\n':
			return "", 0, false
		case s[j] == '}':
			if depth > 0 {
				depth--
				continue
			}
			if v, set := lookup(name); set && v != "" {
				return v, j + 1, true
			}
			return interpolate(s[start:j], lookup), j + 1, true
		}
	}
	return "", 0, false
}

func isNameByte(c byte, first bool) bool {
	switch {
	case c == '_', 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		return true
	case '0' <= c && c <= '9':
		return !first
	}
	return false
}
