package hooks

import (
	"bytes"
	"fmt"

	lua "github.com/yuin/gopher-lua"
)

// Lua 5.1's pattern matcher (lstrlib.c), behind string.find, match, gmatch
// and gsub in place of gopher-lua's. A pattern can take time exponential in
// its number of repetitions ("(.-)(.-)(.-)b" over a long run of "a"), and a
// library function runs to completion once called: the VM checks the hook's
// deadline only between instructions. This matcher counts its steps and
// checks the deadline every patternCheckEvery of them, so such a pattern
// stops at the deadline like a loop does. It also finds gmatch's matches one
// at a time, as Lua does, where gopher-lua collects them all up front.

const (
	// patternMaxCaptures is LUA_MAXCAPTURES.
	patternMaxCaptures = 32
	// patternMaxDepth bounds the matcher's recursion (Lua 5.2's
	// MAXCCALLS): it grows with the pattern's length, never the subject's.
	patternMaxDepth = 200
	// patternCheckEvery is how many steps pass between deadline checks, a
	// power of two.
	patternCheckEvery = 1 << 10

	capUnfinished   = -1
	capPosition     = -2
	patternEsc      = '%'
	patternSpecials = "^$*+?.([%-"
)

// matchState is one match attempt's state (lstrlib.c's MatchState).
type matchState struct {
	L       *lua.LState
	fn      string // the library function, for error messages
	src     string
	done    <-chan struct{}
	steps   uint
	depth   int
	level   int
	capture [patternMaxCaptures]struct{ init, len int }
}

func newMatchState(L *lua.LState, fn, src string) *matchState {
	ms := &matchState{L: L, fn: fn, src: src}
	if ctx := L.Context(); ctx != nil {
		ms.done = ctx.Done()
	}
	return ms
}

// step counts one unit of matching work and, every patternCheckEvery
// units, stops the match with an error once the hook's deadline has passed.
func (ms *matchState) step() {
	ms.steps++
	if ms.steps&(patternCheckEvery-1) != 0 || ms.done == nil {
		return
	}
	select {
	case <-ms.done:
		ms.L.RaiseError("%s: pattern matching stopped at the hook's deadline", ms.fn)
	default:
	}
}

func (ms *matchState) errorf(format string, args ...any) {
	ms.L.RaiseError("%s: %s", ms.fn, fmt.Sprintf(format, args...))
}

// at is the subject's byte at s, or 0 past its end (C's terminating NUL).
func (ms *matchState) at(s int) int {
	if s < len(ms.src) {
		return int(ms.src[s])
	}
	return 0
}

func patAt(p string, i int) int {
	if i < len(p) {
		return int(p[i])
	}
	return 0
}

func (ms *matchState) checkCapture(l int) int {
	l -= '1'
	if l < 0 || l >= ms.level || ms.capture[l].len == capUnfinished {
		ms.errorf("invalid capture index")
	}
	return l
}

func (ms *matchState) captureToClose() int {
	for level := ms.level - 1; level >= 0; level-- {
		if ms.capture[level].len == capUnfinished {
			return level
		}
	}
	ms.errorf("invalid pattern capture")
	return 0
}

// classEnd returns the index just past the single-character class at p[i].
func (ms *matchState) classEnd(p string, i int) int {
	c := patAt(p, i)
	i++
	switch c {
	case patternEsc:
		if i >= len(p) {
			ms.errorf("malformed pattern (ends with '%%')")
		}
		return i + 1
	case '[':
		if patAt(p, i) == '^' {
			i++
		}
		for { // look for the closing ']'
			if i >= len(p) {
				ms.errorf("malformed pattern (missing ']')")
			}
			c := p[i]
			i++
			if c == patternEsc && i < len(p) {
				i++ // skip escapes such as %]
			}
			if patAt(p, i) == ']' {
				return i + 1
			}
		}
	}
	return i
}

func isalpha(c int) bool  { return 'a' <= c|0x20 && c|0x20 <= 'z' }
func isdigit(c int) bool  { return '0' <= c && c <= '9' }
func islower(c int) bool  { return 'a' <= c && c <= 'z' }
func isupper(c int) bool  { return 'A' <= c && c <= 'Z' }
func iscntrl(c int) bool  { return c < 0x20 || c == 0x7f }
func isspace(c int) bool  { return c == ' ' || ('\t' <= c && c <= '\r') }
func isalnum(c int) bool  { return isalpha(c) || isdigit(c) }
func isxdigit(c int) bool { return isdigit(c) || ('a' <= c|0x20 && c|0x20 <= 'f') }
func ispunct(c int) bool  { return 0x21 <= c && c <= 0x7e && !isalnum(c) }

// matchClass reports whether c is in the class %cl (C locale).
func matchClass(c, cl int) bool {
	var res bool
	switch cl | 0x20 {
	case 'a':
		res = isalpha(c)
	case 'c':
		res = iscntrl(c)
	case 'd':
		res = isdigit(c)
	case 'l':
		res = islower(c)
	case 'p':
		res = ispunct(c)
	case 's':
		res = isspace(c)
	case 'u':
		res = isupper(c)
	case 'w':
		res = isalnum(c)
	case 'x':
		res = isxdigit(c)
	case 'z':
		res = c == 0
	default:
		return cl == c
	}
	if isalpha(cl) && isupper(cl) {
		return !res
	}
	return res
}

// matchBracketClass reports whether c is in the set p[i:ec], where p[i] is
// '[' and p[ec] is the closing ']'.
func matchBracketClass(c int, p string, i, ec int) bool {
	sig := true
	if patAt(p, i+1) == '^' {
		sig = false
		i++
	}
	for i++; i < ec; i++ {
		switch {
		case p[i] == patternEsc:
			i++
			if matchClass(c, patAt(p, i)) {
				return sig
			}
		case patAt(p, i+1) == '-' && i+2 < ec:
			i += 2
			if int(p[i-2]) <= c && c <= int(p[i]) {
				return sig
			}
		case int(p[i]) == c:
			return sig
		}
	}
	return !sig
}

func singleMatch(c int, p string, i, ep int) bool {
	switch p[i] {
	case '.':
		return true
	case patternEsc:
		return matchClass(c, patAt(p, i+1))
	case '[':
		return matchBracketClass(c, p, i, ep-1)
	}
	return int(p[i]) == c
}

func (ms *matchState) matchBalance(s int, p string, i int) int {
	if i+1 >= len(p) {
		ms.errorf("unbalanced pattern")
	}
	if s >= len(ms.src) || int(ms.src[s]) != int(p[i]) {
		return -1
	}
	b, e, cont := p[i], p[i+1], 1
	for s++; s < len(ms.src); s++ {
		ms.step()
		switch ms.src[s] {
		case e:
			if cont--; cont == 0 {
				return s + 1
			}
		case b:
			cont++
		}
	}
	return -1
}

func (ms *matchState) maxExpand(s int, p string, i, ep int) int {
	n := 0
	for s+n < len(ms.src) && singleMatch(int(ms.src[s+n]), p, i, ep) {
		ms.step()
		n++
	}
	for ; n >= 0; n-- { // try with the longest run first
		if res := ms.match(s+n, p, ep+1); res >= 0 {
			return res
		}
	}
	return -1
}

func (ms *matchState) minExpand(s int, p string, i, ep int) int {
	for {
		if res := ms.match(s, p, ep+1); res >= 0 {
			return res
		}
		if s < len(ms.src) && singleMatch(int(ms.src[s]), p, i, ep) {
			s++
		} else {
			return -1
		}
	}
}

func (ms *matchState) startCapture(s int, p string, i, what int) int {
	level := ms.level
	if level >= patternMaxCaptures {
		ms.errorf("too many captures")
	}
	ms.capture[level].init = s
	ms.capture[level].len = what
	ms.level = level + 1
	res := ms.match(s, p, i)
	if res < 0 {
		ms.level--
	}
	return res
}

func (ms *matchState) endCapture(s int, p string, i int) int {
	l := ms.captureToClose()
	ms.capture[l].len = s - ms.capture[l].init
	res := ms.match(s, p, i)
	if res < 0 {
		ms.capture[l].len = capUnfinished
	}
	return res
}

func (ms *matchState) matchCapture(s, l int) int {
	l = ms.checkCapture(l)
	c := ms.capture[l]
	// A position capture has no text: as in C, where its length is a
	// huge unsigned number, it matches nothing.
	if c.len >= 0 && len(ms.src)-s >= c.len && ms.src[c.init:c.init+c.len] == ms.src[s:s+c.len] {
		return s + c.len
	}
	return -1
}

// match matches p[i:] at src[s:] and returns the end of the match, or -1.
func (ms *matchState) match(s int, p string, i int) int {
	ms.depth++
	if ms.depth > patternMaxDepth {
		ms.errorf("pattern too complex")
	}
	defer func() { ms.depth-- }()
	for {
		ms.step()
		if i >= len(p) {
			return s
		}
		switch p[i] {
		case '(':
			if patAt(p, i+1) == ')' {
				return ms.startCapture(s, p, i+2, capPosition)
			}
			return ms.startCapture(s, p, i+1, capUnfinished)
		case ')':
			return ms.endCapture(s, p, i+1)
		case '$':
			if i+1 == len(p) {
				if s == len(ms.src) {
					return s
				}
				return -1
			}
		case patternEsc:
			switch c := patAt(p, i+1); {
			case c == 'b':
				if s = ms.matchBalance(s, p, i+2); s < 0 {
					return -1
				}
				i += 4
				continue
			case c == 'f':
				i += 2
				if patAt(p, i) != '[' {
					ms.errorf("missing '[' after '%%f' in pattern")
				}
				ep := ms.classEnd(p, i)
				prev := 0
				if s > 0 {
					prev = int(ms.src[s-1])
				}
				if matchBracketClass(prev, p, i, ep-1) || !matchBracketClass(ms.at(s), p, i, ep-1) {
					return -1
				}
				i = ep
				continue
			case isdigit(c):
				if s = ms.matchCapture(s, c); s < 0 {
					return -1
				}
				i += 2
				continue
			}
		}
		ep := ms.classEnd(p, i)
		m := s < len(ms.src) && singleMatch(int(ms.src[s]), p, i, ep)
		switch patAt(p, ep) {
		case '?':
			if m {
				if res := ms.match(s+1, p, ep+1); res >= 0 {
					return res
				}
			}
			i = ep + 1
		case '*':
			return ms.maxExpand(s, p, i, ep)
		case '+':
			if !m {
				return -1
			}
			return ms.maxExpand(s+1, p, i, ep)
		case '-':
			return ms.minExpand(s, p, i, ep)
		default:
			if !m {
				return -1
			}
			s++
			i = ep
		}
	}
}

// capture returns capture i of the match src[s:e]; the whole match when
// the pattern has no captures and i is 0.
func (ms *matchState) captureValue(i, s, e int) lua.LValue {
	if i >= ms.level {
		if i != 0 {
			ms.errorf("invalid capture index")
		}
		return lua.LString(ms.src[s:e])
	}
	c := ms.capture[i]
	switch c.len {
	case capUnfinished:
		ms.errorf("unfinished capture")
	case capPosition:
		return lua.LNumber(c.init + 1)
	}
	return lua.LString(ms.src[c.init : c.init+c.len])
}

// pushCaptures pushes the captures of the match src[s:e] (the whole match
// when there are none and wholeIfNone) and returns how many it pushed.
func (ms *matchState) pushCaptures(s, e int, wholeIfNone bool) int {
	n := ms.level
	if n == 0 && wholeIfNone {
		n = 1
	}
	for i := range n {
		ms.L.Push(ms.captureValue(i, s, e))
	}
	return n
}

// posRelat turns a Lua string position (negative from the end) into a
// 0-based offset clamped to [0, n].
func posRelat(pos, n int) int {
	if pos < 0 {
		pos += n + 1
	}
	pos--
	return min(max(pos, 0), n)
}

// strFind is string.find(s, pattern [, init [, plain]]).
func strFind(L *lua.LState) int { return strFindAux(L, true) }

// strMatch is string.match(s, pattern [, init]).
func strMatch(L *lua.LState) int { return strFindAux(L, false) }

func strFindAux(L *lua.LState, find bool) int {
	s := L.CheckString(1)
	p := L.CheckString(2)
	init := posRelat(L.OptInt(3, 1), len(s))
	if find && (lua.LVAsBool(L.Get(4)) || !containsAny(p, patternSpecials)) {
		if k := bytes.Index([]byte(s[init:]), []byte(p)); k >= 0 {
			L.Push(lua.LNumber(init + k + 1))
			L.Push(lua.LNumber(init + k + len(p)))
			return 2
		}
		L.Push(lua.LNil)
		return 1
	}
	fn := "string.match"
	if find {
		fn = "string.find"
	}
	ms := newMatchState(L, fn, s)
	anchor := len(p) > 0 && p[0] == '^'
	pi := 0
	if anchor {
		pi = 1
	}
	for s1 := init; ; s1++ {
		ms.level = 0
		if e := ms.match(s1, p, pi); e >= 0 {
			if find {
				L.Push(lua.LNumber(s1 + 1))
				L.Push(lua.LNumber(e))
				return ms.pushCaptures(-1, -1, false) + 2
			}
			return ms.pushCaptures(s1, e, true)
		}
		if s1 >= len(s) || anchor {
			break
		}
	}
	L.Push(lua.LNil)
	return 1
}

func containsAny(s, chars string) bool {
	for i := 0; i < len(s); i++ {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return true
			}
		}
	}
	return false
}

// strGmatch is string.gmatch(s, pattern): an iterator over the matches,
// each found when the iterator is called.
func strGmatch(L *lua.LState) int {
	s := L.CheckString(1)
	p := L.CheckString(2)
	pos := 0
	L.Push(L.NewFunction(func(L *lua.LState) int {
		ms := newMatchState(L, "string.gmatch", s)
		for src := pos; src <= len(s); src++ {
			ms.level = 0
			if e := ms.match(src, p, 0); e >= 0 {
				pos = e
				if e == src {
					pos++ // an empty match: go on at least one position
				}
				return ms.pushCaptures(src, e, true)
			}
		}
		pos = len(s) + 1
		return 0
	}))
	return 1
}

// strGsub is string.gsub(s, pattern, repl [, n]), its result charged to
// the call's string budget as it grows.
func (v *vm) strGsub(L *lua.LState) int {
	src := L.CheckString(1)
	p := L.CheckString(2)
	repl := L.Get(3)
	switch repl.Type() {
	case lua.LTNumber, lua.LTString, lua.LTTable, lua.LTFunction:
	default:
		L.ArgError(3, "string/function/table expected")
	}
	maxN := L.OptInt(4, len(src)+1)
	anchor := len(p) > 0 && p[0] == '^'
	pi := 0
	if anchor {
		pi = 1
	}
	ms := newMatchState(L, "string.gsub", src)
	var b []byte
	n := 0
	s := 0
scan:
	for n < maxN {
		ms.level = 0
		e := ms.match(s, p, pi)
		if e >= 0 {
			n++
			b = ms.addValue(b, repl, s, e)
			if !v.fits(len(b)) {
				v.charge(L, "string.gsub", len(b))
			}
		}
		switch {
		case e > s:
			s = e
		case s < len(src):
			b = append(b, src[s])
			s++
		default:
			break scan
		}
		if anchor {
			break
		}
	}
	b = append(b, src[s:]...)
	v.charge(L, "string.gsub", len(b))
	L.Push(lua.LString(b))
	L.Push(lua.LNumber(n))
	return 2
}

// addValue appends the replacement of the match src[s:e] to b.
func (ms *matchState) addValue(b []byte, repl lua.LValue, s, e int) []byte {
	L := ms.L
	var v lua.LValue
	switch r := repl.(type) {
	case lua.LString:
		return ms.addString(b, string(r), s, e)
	case lua.LNumber:
		return ms.addString(b, r.String(), s, e)
	case *lua.LTable:
		v = L.GetTable(r, ms.captureValue(0, s, e))
	case *lua.LFunction:
		L.Push(r)
		n := ms.pushCaptures(s, e, true)
		L.Call(n, 1)
		v = L.Get(-1)
		L.Pop(1)
	}
	switch v := v.(type) {
	case *lua.LNilType:
		return append(b, ms.src[s:e]...)
	case lua.LBool:
		if !v {
			return append(b, ms.src[s:e]...)
		}
	case lua.LString, lua.LNumber:
		return append(b, v.String()...)
	}
	ms.errorf("invalid replacement value (a %s)", v.Type())
	return b
}

// addString appends repl with %0..%9 replaced by the match's captures.
func (ms *matchState) addString(b []byte, repl string, s, e int) []byte {
	for i := 0; i < len(repl); i++ {
		c := repl[i]
		if c != patternEsc {
			b = append(b, c)
			continue
		}
		i++
		switch d := patAt(repl, i); {
		case !isdigit(d):
			if i < len(repl) {
				b = append(b, repl[i])
			}
		case d == '0':
			b = append(b, ms.src[s:e]...)
		default:
			b = append(b, lua.LVAsString(ms.captureValue(d-'1', s, e))...)
		}
	}
	return b
}
