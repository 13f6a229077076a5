package config

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ${VAR} and ${VAR:-default} are replaced in scalar values after the file is
// parsed, never in its text: a value can never change the file's structure,
// whatever characters it holds (a newline, a quote, ": ", "#"), and the
// lines of later errors are the file's own. Before parsing, each reference
// is swapped for a placeholder of letters, digits and underscores
// (maskRefs), so that an unquoted reference is still a plain scalar inside
// a flow collection such as "{ token: ${TOKEN} }", where its braces would
// otherwise end the collection; the walk after parsing (interpolate) puts
// the reference back and expands it.

// envRefs holds the references maskRefs took out of a file's text.
type envRefs struct {
	refs []string       // the references as written, by placeholder number
	re   *regexp.Regexp // matches a placeholder; nil when there are none
	pre  string
}

// maskRefs returns text with every reference replaced by a placeholder
// that occurs nowhere else in text. References never span lines, so line
// numbers are unchanged.
func maskRefs(text string) (string, *envRefs) {
	e := &envRefs{}
	if !strings.Contains(text, "${") {
		return text, e
	}
	e.pre = "__env"
	for strings.Contains(text, e.pre) {
		e.pre += "_"
	}
	var b strings.Builder
	b.Grow(len(text))
	for i := 0; i < len(text); {
		if strings.HasPrefix(text[i:], "$${") {
			b.WriteString("$${")
			i += 3
			continue
		}
		if !strings.HasPrefix(text[i:], "${") {
			b.WriteByte(text[i])
			i++
			continue
		}
		r, ok := reference(text[i:], func(string) (string, bool) { return "", true })
		if !ok || r.mistyped && !plainRef(text, i, r.n) {
			// A mistyped reference in a quoted value, or one whose
			// "}" is in a comment, is found again in its value after
			// parsing (expand), bounded by the value: here the "}"
			// that closed it may be the file's own. Unquoted, it is
			// masked as a reference is, so that inside "{ … }" its
			// braces are no flow mapping's.
			b.WriteString("${")
			i += 2
			continue
		}
		fmt.Fprintf(&b, "%s%d_", e.pre, len(e.refs))
		e.refs = append(e.refs, text[i:i+r.n])
		i += r.n
	}
	if len(e.refs) > 0 {
		e.re = regexp.MustCompile(regexp.QuoteMeta(e.pre) + `(\d+)_`)
	}
	return b.String(), e
}

// plainRef reports whether text[i:i+n], a reference on one line, is in a
// plain (unquoted) value and ends before any comment: outside the quotes a
// value may start with on its line (a quote that starts a scalar), and
// without " #" in it.
func plainRef(text string, i, n int) bool {
	start := strings.LastIndexByte(text[:i], '\n') + 1
	quoted, comment := scanPlain(text[start:i], nil)
	return !quoted && !comment && !strings.Contains(text[i:i+n], " #") && !strings.Contains(text[i:i+n], "\t#")
}

// scanPlain calls each (when set) with the index of every byte of line
// outside quoted text and comments, as YAML reads them well enough for a
// hint: a quote that starts a scalar (after a space, "[", "{", "," or ":";
// "it's" has none) opens quoted text, " #" a comment, which ends the scan.
// It reports whether line ends inside quoted text or in a comment.
func scanPlain(line string, each func(j int)) (quoted, comment bool) {
	var quote byte
	for j := 0; j < len(line); j++ {
		c := line[j]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else if c == '\\' && quote == '"' {
				j++
			}
		case (c == '"' || c == '\'') && (j == 0 || strings.IndexByte(" \t[{,:", line[j-1]) >= 0):
			quote = c
		case c == '#' && (j == 0 || line[j-1] == ' ' || line[j-1] == '\t'):
			return false, true
		case each != nil:
			each(j)
		}
	}
	return quote != 0, false
}

// unmask puts the references maskRefs took out of s back.
func (e *envRefs) unmask(s string) string {
	if e.re == nil || !strings.Contains(s, e.pre) {
		return s
	}
	return e.re.ReplaceAllStringFunc(s, func(m string) string {
		i, err := strconv.Atoi(e.re.FindStringSubmatch(m)[1])
		if err != nil || i >= len(e.refs) {
			return m
		}
		return e.refs[i]
	})
}

// interpolate walks the tree under n (path is n's key path): it puts the
// references e took out back into keys and values, and expands those of
// scalar values with lookup. Keys are kept as written; an alias is
// expanded where its anchor is written.
//
// An unset variable without a default is a problem with the key whose
// value names it: a secret or a header silently left empty is worse than a
// server that does not start. The value then counts as absent. A plain
// (unquoted) value is read again after substitution as if written so, so
// that ${PORT} can fill a number and an empty result means unset.
func (d *decoder) interpolate(n *yaml.Node, path string, e *envRefs, lookup func(string) (string, bool), depth int) {
	if n == nil || depth > maxDepth {
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := path
			if k.Kind == yaml.ScalarNode {
				k.Value = e.unmask(k.Value)
				if k.Value != "<<" || k.ShortTag() != "!!merge" {
					p = join(path, k.Value)
				}
			}
			d.interpolate(v, p, e, lookup, depth+1)
			if strings.HasSuffix(path, ".headers") && v.Kind == yaml.ScalarNode && v.Style == 0 && v.Value == "" && d.fromEnv[v].written != "" {
				// A header a variable left empty is not written: not
				// sent, rather than sent empty (a map keeps a null).
				n.Content = slices.Delete(n.Content, i, i+2)
				i -= 2
			}
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			d.interpolate(item, fmt.Sprintf("%s[%d]", path, i), e, lookup, depth+1)
		}
	case yaml.ScalarNode:
		raw := e.unmask(n.Value)
		if !strings.Contains(raw, "${") {
			n.Value = raw
			return
		}
		val, unset, fails, empty := expand(raw, lookup)
		if len(empty) > 0 && emptyRefused(path) {
			// A secret or header a variable leaves empty: set but
			// empty is as bad as unset (a .env line "KEY=").
			what := "header"
			if strings.HasSuffix(path, ".secret") {
				what = "secret"
			}
			fails = append(fails, fmt.Sprintf("environment variable %s is set but empty, which would leave this %s empty: set it, or write ${%s:-} for an empty value on purpose",
				empty[0], what, empty[0]))
		}
		if len(fails) > 0 {
			d.fail(n, path, "%s", strings.Join(fails, "; "))
			n.Value, n.Tag, n.Style = "", "!!null", 0
			return
		}
		if len(unset) > 0 {
			d.fail(n, path, "%s", unsetMessage(unset))
			n.Value, n.Tag, n.Style = "", "!!null", 0
			return
		}
		n.Value = val
		if n.Style == 0 {
			n.Tag = "" // resolved again from the new value
			if val != "" && isNullWord(val) {
				// A value of "null" or "~" is that text, not "not
				// written": read again as YAML it would leave a
				// secret (a webhook's, Redis's password) unset.
				n.Tag = "!!str"
			}
		}
		if val != raw {
			d.fromEnv[n] = envValue{written: raw, value: val}
		}
	}
}

// emptyRefused reports whether path is a value a plain ${VAR} set but
// empty may not fill: a webhook's or the usage hook's secret (the POSTs
// would go unsigned) or a header a backend or receiver is sent ("Bearer ").
func emptyRefused(path string) bool {
	return strings.HasSuffix(path, ".secret") && (strings.HasPrefix(path, "webhooks[") || strings.HasPrefix(path, "usage_hook.")) ||
		strings.Contains(path, ".headers.")
}

// isNullWord reports whether a plain YAML scalar s reads as null.
func isNullWord(s string) bool {
	switch s {
	case "~", "null", "Null", "NULL":
		return true
	}
	return false
}

// envValue is a value with references in it: as written, and expanded.
type envValue struct {
	written, value string
}

// hideEnv rewrites a problem's message to name the references its key's
// value was written with where it would quote the value they expand to: a
// variable is where a secret is kept (a token, a password, a URL with
// them), and one given to the wrong key must not show up in an error.
func hideEnv(e *Error, env map[string]envValue) {
	ev, ok := env[e.Path]
	if !ok {
		return
	}
	// Messages quote values (%q); a number is written plain.
	if q := strconv.Quote(ev.value); strings.Contains(e.Msg, q) {
		e.Msg = strings.ReplaceAll(e.Msg, q, strconv.Quote(ev.written))
	} else if ev.value != "" {
		// A number is shown as "got N"; a bound the message names
		// (want more than 0) is not the value.
		e.Msg = strings.ReplaceAll(e.Msg, "got "+ev.value, "got "+ev.written)
	}
}

// unsetMessage says which variables are unset and how to give a default.
func unsetMessage(names []string) string {
	v := names[0]
	what := "environment variable " + v + " is not set"
	if len(names) > 1 {
		what = "environment variables " + strings.Join(names, ", ") + " are not set"
	}
	return fmt.Sprintf("%s; write ${%s:-default} to give a default, ${%s:-} for an empty value", what, v, v)
}

// expand replaces the references in s, as a shell (or docker compose)
// does: ${VAR} by VAR's value; ${VAR:-default} by VAR's value when it is
// set and not empty, else by the default, and ${VAR-default} only when it
// is unset; ${VAR:+alt} by alt when VAR is set and not empty, and
// ${VAR+alt} when it is set; ${VAR:?message} by VAR's value, or a failure
// saying message when it is unset or empty, and ${VAR?message} only when
// it is unset. Defaults, alternatives and messages may themselves hold
// references. "$${" writes a literal "${". Anything that does not look
// like a reference (no name of [A-Za-z_][A-Za-z0-9_]* after "${", or a
// name followed by neither "}" nor an operator) is kept as written. unset
// lists, once each, the variables referred to without a default that are
// not set; they expand to nothing. fails says why a reference could not
// be expanded: a ${VAR:?message} whose VAR is missing, an operator LLMProxy
// does not support (${VAR:=default} assigns in a shell, which a config
// file cannot), or an operator with no closing brace on its line.
func expand(s string, lookup func(string) (string, bool)) (out string, unset, fails, empty []string) {
	if !strings.Contains(s, "${") {
		return s, nil, nil, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], "$${") {
			b.WriteString("${")
			i += 3
			continue
		}
		if !strings.HasPrefix(s[i:], "${") {
			b.WriteByte(s[i])
			i++
			continue
		}
		r, ok := reference(s[i:], lookup)
		if !ok {
			b.WriteString("${")
			i += 2
			continue
		}
		for _, m := range r.unset {
			if !slices.Contains(unset, m) {
				unset = append(unset, m)
			}
		}
		fails = append(fails, r.fails...)
		if r.empty && !slices.Contains(empty, r.name) {
			empty = append(empty, r.name)
		}
		b.WriteString(r.val)
		i += r.n
	}
	return b.String(), unset, fails, empty
}

// ref is one reference, expanded: its value, how many bytes it spans, the
// variables it needed that are unset and why it failed, if it did.
type ref struct {
	val   string
	n     int
	unset []string
	fails []string
	// mistyped is set for a "${…}" whose name is no variable's
	// (notAReference).
	mistyped bool
	// empty is set for a plain ${VAR} whose variable is set but empty,
	// named name.
	empty bool
	name  string
}

// reference expands the reference at the start of s ("${…}"). It reports
// false when s does not start with one (see expand).
func reference(s string, lookup func(string) (string, bool)) (ref, bool) {
	i := 2
	for i < len(s) && isNameByte(s[i], i == 2) {
		i++
	}
	name := s[2:i]
	if name == "" {
		return notAReference(s, 2)
	}
	if i >= len(s) || s[i] == '\n' {
		// "token: ${ADMIN_TOKEN": a reference missing its brace, not a
		// value to keep as written (the literal would become the token).
		return ref{n: i, fails: []string{fmt.Sprintf("${%s has no closing brace on its line ($${ writes a literal ${)", name)}}, true
	}
	if s[i] == '}' {
		v, set := lookup(name)
		if !set {
			return ref{n: i + 1, unset: []string{name}}, true
		}
		return ref{val: v, n: i + 1, empty: v == "", name: name}, true
	}
	colon := s[i] == ':'
	j := i
	if colon {
		j++
	}
	var op byte
	if j < len(s) && strings.IndexByte("-+?", s[j]) >= 0 {
		op = s[j]
		j++
	} else if !colon && s[i] != '=' {
		return notAReference(s, i) // "${HOST x", "${user.name}"
	}
	end := closingBrace(s, j)
	if end < 0 {
		return ref{n: j, fails: []string{fmt.Sprintf("${%s%s has no closing brace on its line", name, s[i:j])}}, true
	}
	if op == 0 {
		return ref{n: end + 1, fails: []string{fmt.Sprintf("${%s%s…} is not a form LLMProxy reads: write ${%s}, ${%s:-default}, ${%s-default}, ${%s:?message} or ${%s:+value} ($${ writes a literal ${)",
			name, s[i:min(j+1, end)], name, name, name, name, name)}}, true
	}
	v, set := lookup(name)
	present := set && (!colon || v != "")
	word := s[j:end]
	r := ref{n: end + 1}
	switch op {
	case '-':
		if present {
			r.val = v
		} else {
			r.val, r.unset, r.fails, _ = expand(word, lookup)
		}
	case '+':
		if present {
			r.val, r.unset, r.fails, _ = expand(word, lookup)
		}
	case '?':
		if present {
			r.val = v
			break
		}
		msg, _, _, _ := expand(word, lookup)
		what := "environment variable " + name + " is not set"
		if set {
			what = "environment variable " + name + " is empty"
		}
		if msg != "" {
			what += ": " + msg
		}
		r.fails = []string{what}
	}
	return r, true
}

// notAReference is what reference reports for s, a "${" whose name ends
// (or is missing) at s[i], which no form of reference continues: text kept
// as written when no "}" closes it on its line ("${ x", a price in
// "${5"), else a failure ("${user.name}", "${MY VAR}", "${}", "${1A}"): a
// mistyped reference kept as written would become the value, a token or a
// secret.
func notAReference(s string, i int) (ref, bool) {
	end := closingBrace(s, i)
	if end < 0 {
		return ref{}, false
	}
	return ref{n: end + 1, mistyped: true, fails: []string{fmt.Sprintf("%s is not a reference LLMProxy reads: a variable's name is letters, digits and _, not starting with a digit ($${ writes a literal ${)", s[:end+1])}}, true
}

// closingBrace returns the index of the "}" that closes a reference whose
// word starts at s[start:], skipping nested references and "$${"; -1 when
// the line ends first.
func closingBrace(s string, start int) int {
	depth := 0
	for j := start; j < len(s); j++ {
		switch {
		case strings.HasPrefix(s[j:], "$${"):
			j += 2
		case strings.HasPrefix(s[j:], "${"):
			depth++
			j++
		case s[j] == '\n':
			return -1
		case s[j] == '}':
			if depth == 0 {
				return j
			}
			depth--
		}
	}
	return -1
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
