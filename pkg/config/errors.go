package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Error is one problem with a config file: where it is and what is wrong.
type Error struct {
	// File is the config file's name as given to Load or Parse; may be empty.
	File string
	// Line is the 1-based line of the offending key, or 0 when the key is
	// missing from the file.
	Line int
	// Path is the key's path, e.g. "backends[1].url"; empty for problems
	// with the file as a whole.
	Path string
	// Msg says what is wrong.
	Msg string
	// Err is the underlying error, if any (e.g. the file could not be read).
	Err error
}

// Error formats e as "file:LINE: key path: msg".
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteString(":")
			b.WriteString(strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString("key ")
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Errors is every problem found in a config file, in file order. Load, Parse
// and Validate return it (as a non-nil *Errors) so a caller can print one
// problem per line.
type Errors struct {
	List []*Error
}

// Error joins the problems, one per line.
func (e *Errors) Error() string {
	lines := make([]string, len(e.List))
	for i, x := range e.List {
		lines[i] = x.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns each problem, so errors.Is and errors.As see them.
func (e *Errors) Unwrap() []error {
	out := make([]error, len(e.List))
	for i, x := range e.List {
		out[i] = x
	}
	return out
}

// add records a problem at path; line may be 0.
func (e *Errors) add(line int, path, format string, args ...any) {
	e.List = append(e.List, &Error{Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// err returns e as an error, or nil when there is no problem. It stamps
// file on every problem and orders them by line, keeping problems about
// missing keys (line 0) last.
func (e *Errors) err(file string) error {
	if e == nil || len(e.List) == 0 {
		return nil
	}
	for _, x := range e.List {
		x.File = file
	}
	sort.SliceStable(e.List, func(i, j int) bool {
		a, b := e.List[i].Line, e.List[j].Line
		if a == 0 || b == 0 {
			return a != 0 && b == 0
		}
		return a < b
	})
	return e
}
