package gateway

import (
	"strconv"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
)

// notUTF8 is the 400 for a request body that is not valid UTF-8, or nil
// when it is. JSON text is UTF-8 (RFC 8259), and neither the request
// parser nor the event encoder checks it: such a body would reach the
// backend, and the event, which carries the body, would not be valid JSON.
// The message names the first bad byte, counted from 1 as the JSON syntax
// errors count.
func notUTF8(body []byte) *apierr.Error {
	if utf8.Valid(body) {
		return nil
	}
	return apierr.BadRequest("invalid_json", "the request body is not valid UTF-8 (at byte "+strconv.Itoa(firstInvalidUTF8(body)+1)+")")
}

// firstInvalidUTF8 returns the offset of the first byte of b that does not
// start a valid UTF-8 sequence, or len(b) when there is none.
func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return len(b)
}
