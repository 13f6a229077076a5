package jsonscan

import (
	"unicode/utf16"
	"unicode/utf8"
)

// DecodeU decodes the JSON \uXXXX escape at the start of s, with the low
// half of a surrogate pair after it, and returns the character and the
// bytes read: 6, or 12 for a pair. A lone surrogate is utf8.RuneError with
// 6 bytes read; an escape whose four hexadecimal digits are not there is
// utf8.RuneError with 2 (the backslash and the u).
func DecodeU[T string | []byte](s T) (rune, int) {
	r := hex4(s[min(len(s), 2):])
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

// hex4 reads four hexadecimal digits at the start of s; -1 when they are
// not there.
func hex4[T string | []byte](s T) rune {
	if len(s) < 4 {
		return -1
	}
	var r rune
	for i := range 4 {
		c := s[i]
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
