package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// source remembers where a Config came from, so that Validate can name lines
// and defaults can tell an absent key from a zero written on purpose.
type source struct {
	file  string              // as given to Load or Parse
	dir   string              // the file's directory; relative paths start here
	lines map[string]int      // key path → line
	given map[string]bool     // key path → a non-null value was written
	env   map[string]envValue // key path → a value with ${VAR} in it
}

// Load reads the config file at path; see Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		errs := &Errors{List: []*Error{{Msg: "read config: " + err.Error(), Err: err}}}
		return nil, errs.err(path)
	}
	return Parse(data, path)
}

// Parse reads a config from data. filename is used in error messages and as
// the base for relative paths in the file (lua.scripts); "" means the
// working directory.
//
// Parse interpolates ${VAR} and ${VAR:-default} from the environment into
// the values of the file (an unset variable without a default is an
// error), rejects unknown keys and badly typed values, fills defaults
// (applyDefaults) and validates (Validate). Every problem found is returned
// at once as a *Errors, each with the line and key path.
func Parse(data []byte, filename string) (*Config, error) {
	text, refs := maskRefs(string(data))
	root, perr := parseYAML(text)
	if perr != nil {
		errs := &Errors{List: []*Error{perr}}
		return nil, errs.err(filename)
	}

	c := &Config{}
	d := newDecoder(root)
	d.interpolate(root, "", refs, os.LookupEnv, 0)
	if root != nil {
		if root.Kind != yaml.MappingNode && !isNull(root) {
			d.fail(root, "", "want a mapping of keys at the top level, not a %s", kindName(root))
		} else {
			d.decode(root, reflect.ValueOf(c).Elem(), "")
		}
	}
	dir := "."
	if filename != "" {
		dir = filepath.Dir(filename)
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	c.src = &source{file: filename, dir: dir, lines: d.lines, given: d.given, env: d.envAt}
	zeros := c.writtenZeros()
	c.applyDefaults()
	c.resolvePaths()

	errs := d.errs
	errs.List = append(errs.List, c.zeroProblems(zeros).List...)
	for _, e := range c.validate().List {
		if !covered(e.Path, d.bad) {
			errs.List = append(errs.List, e)
		}
	}
	for _, e := range errs.List {
		hideEnv(e, d.envAt)
	}
	if err := errs.err(filename); err != nil {
		return nil, err
	}
	return c, nil
}

// covered reports whether path, or a key above it, already has a decode
// problem; a validation complaint about it would only repeat that problem.
func covered(path string, bad map[string]bool) bool {
	for p := path; p != ""; p = parentPath(p) {
		if bad[p] {
			return true
		}
	}
	return bad[""]
}

// parentPath returns the path one level up: "a.b[2].c" → "a.b[2]" → "a.b".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML parses text into its single document's root node (nil for an
// empty file).
func parseYAML(text string) (root *yaml.Node, perr *Error) {
	defer func() {
		if r := recover(); r != nil {
			root, perr = nil, &Error{Msg: fmt.Sprintf("invalid YAML: %v", r)}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader([]byte(text)))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, yamlError(err, text)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, yamlError(err, text)
		}
		return nil, &Error{Line: extra.Line, Msg: "only one YAML document is allowed"}
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		return doc.Content[0], nil
	}
	return nil, nil
}

// yamlParserErrors are the messages of yaml.v3's parser (not its
// scanner) that name a construct left open. yaml.v3 gives their line
// 0-based, and it is the line where the open construct (a flow mapping or
// list, a block) starts rather than where the parser gave up.
var yamlParserErrors = []string{
	"did not find expected ',' or '}'",
	"did not find expected ',' or ']'",
	"did not find expected '-' indicator",
	"did not find expected key",
	"did not find expected node content",
	"did not find expected <document start>",
}

func yamlError(err error, src string) *Error {
	// Lines are counted as YAML breaks them: a CR alone ends one too.
	src = strings.ReplaceAll(strings.ReplaceAll(src, "\r\n", "\n"), "\r", "\n")
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		text := m[2]
		if slices.Contains(yamlParserErrors, text) {
			line++
			if open, c := unclosedBracket(src, line); open > 0 {
				// yaml.v3's line is where it gave up, which may be
				// lines past the bracket left open.
				line = open
				text += fmt.Sprintf(" (the %q opened on this line is not closed)", c)
			} else {
				text += " (a line of the block that starts here is out of place)"
			}
		}
		return &Error{Line: line, Msg: "invalid YAML: " + text, Err: err}
	}
	text := strings.TrimPrefix(msg, "yaml: ")
	return &Error{Line: yamlProblemLine(text, src), Msg: "invalid YAML: " + text, Err: err}
}

// unknownAliasLine returns the line of the first alias *name that yaml.v3
// reads as one (not text in a comment, a quoted or block scalar, or a plain
// one): of the places "*name" stands, the first with which the file, every
// later place blanked out, still fails for it. 0 when none does.
func unknownAliasLine(src, name string) int {
	alias := "*" + name
	var at []int // where "*name" stands, ending where yaml.v3 ends a name
	for i := 0; ; {
		j := strings.Index(src[i:], alias)
		if j < 0 {
			break
		}
		j += i
		if e := j + len(alias); e == len(src) || strings.IndexByte(" \t\r\n\x00?:,[]{}%@`", src[e]) >= 0 {
			at = append(at, j)
		}
		i = j + 1
	}
	blank := "~" + strings.Repeat(" ", len(alias)-1) // a null in YAML
	for k, j := range at {
		b := []byte(src)
		for _, later := range at[k+1:] {
			copy(b[later:], blank)
		}
		if err := decodeAll(b); err != nil && strings.Contains(err.Error(), "unknown anchor '"+name+"'") {
			return 1 + strings.Count(src[:j], "\n")
		}
	}
	return 0
}

// decodeAll decodes every YAML document of b, as parseYAML reads them, and
// returns the first error.
func decodeAll(b []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// yamlProblemLine finds the line (1-based) of a yaml.v3 error that names
// none: bytes its reader refuses (control characters, bad UTF-8) or an
// alias of an anchor never set are looked for in src; any other is the
// parser's or scanner's on the first line, which yaml.v3 leaves unnumbered
// (its lines count from 0, and 0 is left out). 0 when it has no place.
func yamlProblemLine(text, src string) int {
	switch {
	case strings.Contains(text, "excessive aliasing"):
		return 0
	case strings.HasPrefix(text, "unknown anchor '"):
		name, _, _ := strings.Cut(strings.TrimPrefix(text, "unknown anchor '"), "'")
		return unknownAliasLine(src, name)
	case strings.Contains(text, "control characters") || strings.Contains(text, "UTF-8") || strings.Contains(text, "Unicode"):
		for i, r := range src {
			bad := r == utf8.RuneError && !strings.HasPrefix(src[i:], "\uFFFD") ||
				r < 0x20 && r != '\t' && r != '\n' && r != '\r' ||
				r == 0x7f || r >= 0x80 && r <= 0x9f && r != 0x85 || r == 0xfffe || r == 0xffff
			if bad {
				return 1 + strings.Count(src[:i], "\n")
			}
		}
		return 0
	}
	return 1
}

// startsValue reports whether what precedes a character on its line puts
// it where a block value starts: after the indentation and any sequence
// entries' "- " (or a complex key's "? "), alone or after the line's key
// ("key:", with no other ": " before it).
func startsValue(before string) bool {
	t := strings.TrimLeft(before, " \t")
	for {
		switch {
		case strings.HasPrefix(t, "- "), strings.HasPrefix(t, "? "):
			t = strings.TrimLeft(t[2:], " \t")
			continue
		}
		break
	}
	t = strings.TrimRight(t, " \t")
	if t == "" || t == "-" || t == "?" {
		return true
	}
	key, ok := strings.CutSuffix(t, ":")
	return ok && !strings.Contains(key, ": ") && !strings.ContainsAny(key, "#")
}

// unclosedBracket returns the line (1-based) of the innermost '[' or '{'
// of src that no bracket closes by the end of line upto, and the bracket;
// 0 when every one is closed. Quoted text and comments are skipped.
func unclosedBracket(src string, upto int) (int, byte) {
	type opened struct {
		line int
		c    byte
	}
	var stack []opened
	for i, l := range strings.Split(src, "\n") {
		if i >= upto {
			break
		}
		scanPlain(l, func(j int) {
			switch c := l[j]; {
			case (c == '[' || c == '{') && (len(stack) > 0 || startsValue(l[:j])):
				// Outside a flow collection a bracket opens one only
				// where a value starts ("a[1" and "\[x" are text).
				stack = append(stack, opened{i + 1, c})
			case (c == ']' || c == '}') && len(stack) > 0:
				stack = stack[:len(stack)-1]
			}
		})
	}
	if len(stack) == 0 {
		return 0, 0
	}
	o := stack[len(stack)-1]
	return o.line, o.c
}

// line returns the line of path, or of the nearest key above it that is in
// the file; 0 when none is.
func (c *Config) line(path string) int {
	if c.src == nil {
		return 0
	}
	for p := path; p != ""; p = parentPath(p) {
		if l, ok := c.src.lines[p]; ok {
			return l
		}
	}
	return 0
}

// Problem returns a problem with the value at path, located as Validate
// locates its own: the file and the line of the key (or of the nearest key
// above it). Checks this package cannot make, such as compiling what only
// a service understands, report through it.
func (c *Config) Problem(path, format string, args ...any) *Error {
	e := &Error{Line: c.line(path), Path: path, Msg: fmt.Sprintf(format, args...)}
	if c.src != nil {
		e.File = c.src.file
		hideEnv(e, c.src.env)
	}
	return e
}

// given reports whether the file wrote a non-null value at path.
func (c *Config) given(path string) bool {
	return c.src != nil && c.src.given[path]
}

// resolvePaths makes relative file paths absolute, relative to the config
// file's directory.
func (c *Config) resolvePaths() {
	dir := "."
	if c.src != nil {
		dir = c.src.dir
	}
	resolve := func(p *string) {
		s := *p
		if s == "" {
			return
		}
		if !filepath.IsAbs(s) {
			s = filepath.Join(dir, s)
		}
		if abs, err := filepath.Abs(s); err == nil {
			s = abs
		}
		*p = s
	}
	for i := range c.Lua.Scripts {
		resolve(&c.Lua.Scripts[i])
	}
	tlsFiles := []*TLS{&c.UsageHook.TLS}
	for i := range c.Backends {
		tlsFiles = append(tlsFiles, &c.Backends[i].TLS)
	}
	for i := range c.Webhooks {
		tlsFiles = append(tlsFiles, &c.Webhooks[i].TLS)
	}
	for _, t := range tlsFiles {
		for _, p := range []*string{&t.CAFile, &t.CertFile, &t.KeyFile} {
			resolve(p)
		}
	}
	for _, p := range []*string{&c.NATS.Credentials, &c.NATS.TLS.CAFile, &c.NATS.TLS.CertFile, &c.NATS.TLS.KeyFile,
		&c.Redis.TLS.CAFile, &c.Redis.TLS.CertFile, &c.Redis.TLS.KeyFile} {
		resolve(p)
	}
}
