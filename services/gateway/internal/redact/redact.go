// Package redact removes configured content (logging.redact) from request
// and response bodies before an event leaves the gateway.
//
// A rule that starts with "$" is a JSON path whose values are replaced by
// the string "[REDACTED]"; any other rule is a Go regular expression whose
// matches inside every JSON string value (or in plain text) are replaced by
// "[REDACTED]". The package is pure: no I/O, no globals.
package redact

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/jsonscan"
)

// Placeholder is what redacted content is replaced by.
const Placeholder = "[REDACTED]"

var quotedPlaceholder = []byte(`"` + Placeholder + `"`)

// Redactor applies a compiled set of rules. It is immutable after Compile
// and safe for concurrent use. A nil *Redactor redacts nothing.
type Redactor struct {
	paths   []path
	regexps []*regexp.Regexp
}

// Compile parses rules. Empty rules are ignored; an invalid rule is an error
// that names it.
func Compile(rules []string) (*Redactor, error) {
	r := &Redactor{}
	for i, rule := range rules {
		rule = strings.TrimSpace(rule)
		if rule == "" {
			continue
		}
		if strings.HasPrefix(rule, "$") {
			p, err := parsePath(rule)
			if err != nil {
				return nil, fmt.Errorf("redact[%d] %q: %w", i, rule, fmt.Errorf("not a valid JSON path: %w", err))
			}
			r.paths = append(r.paths, p)
			continue
		}
		re, err := regexp.Compile(rule)
		if err != nil {
			return nil, fmt.Errorf("redact[%d] %q: %w", i, rule, fmt.Errorf("not a valid regular expression: %w", err))
		}
		if re.MatchString("") {
			return nil, fmt.Errorf("redact[%d] %q: %w", i, rule, errors.New("the regular expression matches the empty string, so it would put [REDACTED] between every two characters; make it match at least one (x+ rather than x*)"))
		}
		r.regexps = append(r.regexps, re)
	}
	return r, nil
}

// Empty reports whether r has no rules, so callers can skip the work.
func (r *Redactor) Empty() bool {
	return r == nil || (len(r.paths) == 0 && len(r.regexps) == 0)
}

// Text returns s with every regular-expression match replaced. JSON paths
// do not apply to plain text. s itself is returned when nothing matches.
func (r *Redactor) Text(s string) string {
	if r == nil {
		return s
	}
	for _, re := range r.regexps {
		if re.MatchString(s) {
			s = re.ReplaceAllLiteralString(s, Placeholder)
		}
	}
	return s
}

// CutJSON is Text for the start of a JSON document cut short (a captured
// reply past logging.max_capture_bytes), which JSON cannot read: the
// escapes that stand for printable characters (\u002d, \u00e9, a surrogate
// pair, \/) are undone first, so that a rule finds a secret an encoder
// escaped (Python's json.dumps escapes all non-ASCII, Go's <, > and &),
// as it does in a document read whole. Escapes of quotes, backslashes and
// control characters are kept.
func (r *Redactor) CutJSON(s string) string {
	if r == nil || len(r.regexps) == 0 {
		return s
	}
	return r.Text(unescapePrintable(s))
}

// unescapePrintable undoes s's JSON escapes of printable characters other
// than '"' and '\\'.
func unescapePrintable(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '/':
			b.WriteByte('/')
			i++
			continue
		case 'u':
			// A lone surrogate or a cut escape decodes as U+FFFD: kept.
			if r, n := jsonscan.DecodeU(s[i:]); r != utf8.RuneError && r >= ' ' && r != '"' && r != '\\' && r != 0x7f && !unicode.IsControl(r) {
				b.WriteRune(r)
				i += n - 1
				continue
			}
		}
		b.WriteString(s[i : i+2]) // another escape, kept whole
		i++
	}
	return b.String()
}

// JSON returns body with the values selected by the JSON paths replaced by
// "[REDACTED]" and regular-expression matches replaced inside every string
// value. The rest of the document (key order, spacing, numbers) is kept
// byte for byte. When no rule applies, body itself is returned and nothing
// is allocated. A body that is not valid JSON is treated as text: only the
// regular expressions apply, to the raw bytes. Valid JSON in gives valid
// JSON out.
func (r *Redactor) JSON(body []byte) []byte {
	if r.Empty() || len(body) == 0 {
		return body
	}
	if !validJSON(body) {
		return r.raw(body)
	}
	w := walkers.Get().(*walker)
	defer w.release()
	w.r, w.in = r, body
	w.value(w.ws(0))
	if w.out == nil {
		return body
	}
	return append(w.out, body[w.last:]...)
}

// raw applies the regular expressions to bytes that are not JSON.
func (r *Redactor) raw(b []byte) []byte {
	out := b
	for _, re := range r.regexps {
		if re.Match(out) {
			out = re.ReplaceAllLiteral(out, []byte(Placeholder))
		}
	}
	return out
}
