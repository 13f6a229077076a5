package hooks

import (
	"errors"
	"fmt"
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// The string budget bounds the memory a hook can take through the library
// functions that build strings (string.rep, string.format, string.gsub,
// string.upper, string.lower, string.reverse, table.concat,
// llmproxy.json_encode, json_decode, base64_encode and base64_decode, the
// body's encoding) and `..`: each
// charges its result, before building it where the size is known, to a
// budget of Options.MaxStringBytes per call. The deadline bounds time,
// but one such call builds its result in one step, and a loop of them
// keeps what it built.

// resetBudget gives the state a fresh budget for the next call.
func (v *vm) resetBudget(limit int) {
	v.budget, v.budgetLimit = limit, limit
}

// charge takes n bytes from the call's budget, or fails the call with an
// error naming the limit.
func (v *vm) charge(L *lua.LState, fn string, n int) {
	if err := v.take(n); err != nil {
		L.RaiseError("%s: %v", fn, err)
	}
}

// take is charge for callers that return an error.
func (v *vm) take(n int) error {
	if n < 0 || n > v.budget {
		return fmt.Errorf("%w of %d bytes", errBudget, v.budgetLimit)
	}
	v.budget -= n
	return nil
}

// fits reports whether n more bytes would fit the budget, for functions
// that build their result piece by piece.
func (v *vm) fits(n int) bool { return n >= 0 && n <= v.budget }

// rep is string.rep with its result charged, and capped at repLimit per
// call.
func (v *vm) rep(repLimit int) lua.LGFunction {
	return func(L *lua.LState) int {
		s := L.CheckString(1)
		n := L.CheckInt(2)
		if n <= 0 || s == "" {
			L.Push(lua.LString(""))
			return 1
		}
		if len(s) > repLimit/n {
			L.RaiseError("string.rep: result longer than %d bytes", repLimit)
		}
		v.charge(L, "string.rep", len(s)*n)
		L.Push(lua.LString(strings.Repeat(s, n)))
		return 1
	}
}

// sized wraps a library function whose result (or, for json_decode, the
// strings of its result) grows with its first argument: size(len(arg))
// bytes are charged before fn builds anything. Chained, such calls would
// otherwise build gigabytes within the deadline (base64 grows a string by
// a third each time), each in one step the deadline cannot stop.
func (v *vm) sized(name string, size func(int) int, fn lua.LGFunction) lua.LGFunction {
	return func(L *lua.LState) int {
		v.charge(L, name, size(len(L.CheckString(1))))
		return fn(L)
	}
}

// sameSize is the size of a result as long as its argument.
func sameSize(n int) int { return n }

// tableConcat is table.concat(t [, sep [, i [, j]]]) with the result's
// size charged before it is built. Like gopher-lua's, it clamps i and j to
// the table's length.
func (v *vm) tableConcat(L *lua.LState) int {
	t := L.CheckTable(1)
	sep := L.OptString(2, "")
	n := t.Len()
	i := L.OptInt(3, 1)
	j := L.OptInt(4, n)
	if L.GetTop() == 3 && (i > n || i < 1) {
		L.Push(lua.LString(""))
		return 1
	}
	i = max(min(i, n), 1)
	j = min(j, n)
	if i > j {
		L.Push(lua.LString(""))
		return 1
	}
	size := 0
	for k := i; k <= j; k++ {
		x := t.RawGetInt(k)
		if !canConcat(x) {
			L.RaiseError("table.concat: invalid value (at index %d) in table for 'concat'", k)
		}
		size += len(lua.LVAsString(x))
		if k < j {
			size += len(sep)
		}
		if !v.fits(size) {
			break
		}
	}
	v.charge(L, "table.concat", size)
	var b strings.Builder
	b.Grow(size)
	for k := i; k <= j; k++ {
		b.WriteString(lua.LVAsString(t.RawGetInt(k)))
		if k < j {
			b.WriteString(sep)
		}
	}
	L.Push(lua.LString(b.String()))
	return 1
}

// format wraps gopher-lua's string.format (fmt.Sprintf underneath). As in
// Lua, a width or precision has at most two digits; Go's `*` and argument
// indexes are refused. The result's size is bounded from the format and
// the arguments and charged before it is built.
func (v *vm) format(orig lua.LGFunction) lua.LGFunction {
	return func(L *lua.LState) int {
		f := L.CheckString(1)
		size, arg := 0, 2
		for i := 0; i < len(f); i++ {
			if f[i] != '%' {
				size++
				continue
			}
			i++
			if i < len(f) && f[i] == '%' {
				size++
				continue
			}
			for i < len(f) && strings.IndexByte("-+ #0", f[i]) >= 0 {
				i++
			}
			width, prec := 0, 0
			for n := 0; i < len(f) && isdigit(int(f[i])); n++ {
				if n == 2 {
					L.RaiseError("string.format: invalid format (width or precision too long)")
				}
				width = width*10 + int(f[i]-'0')
				i++
			}
			if i < len(f) && f[i] == '.' {
				i++
				for n := 0; i < len(f) && isdigit(int(f[i])); n++ {
					if n == 2 {
						L.RaiseError("string.format: invalid format (width or precision too long)")
					}
					prec = prec*10 + int(f[i]-'0')
					i++
				}
			}
			if i >= len(f) || !isalpha(int(f[i])) {
				L.RaiseError("string.format: invalid format %q", f)
			}
			// A number takes at most a few hundred bytes (%f of 1e308),
			// a string at most 4 times its length (%q escapes a byte as
			// \xff).
			n := 400
			if s, ok := L.Get(arg).(lua.LString); ok {
				n = 4*len(s) + 2
				if f[i] == 's' {
					n = len(s)
				}
			}
			size += width + prec + n
			arg++
		}
		v.charge(L, "string.format", size)
		return orig(L)
	}
}

// jsonEncode is llmproxy.json_encode with its result charged.
func (v *vm) jsonEncode(L *lua.LState) int {
	val, err := fromLua(L.CheckAny(1), 0)
	if err == nil {
		var b []byte
		if b, err = v.encodeJSON(L, "llmproxy.json_encode", val); err == nil {
			L.Push(lua.LString(b))
			return 1
		}
	}
	L.Push(lua.LNil)
	L.Push(lua.LString(err.Error()))
	return 2
}

// encodeJSON encodes val once its size, estimated from the value, fits the
// budget, and charges the size it has. The estimate counts each string
// once per place it appears, so a table that holds one large string many
// times is refused before anything is built.
func (v *vm) encodeJSON(L *lua.LState, fn string, val any) ([]byte, error) {
	b, err := v.encode(val)
	if err != nil && errors.Is(err, errBudget) {
		L.RaiseError("%s: %v", fn, err)
	}
	return b, err
}

// encode encodes val within the budget (see encodeJSON); the error wraps
// errBudget when val does not fit.
func (v *vm) encode(val any) ([]byte, error) {
	if n := jsonSize(val, v.budget); !v.fits(n) {
		return nil, v.take(n)
	}
	b, err := encodeJSON(val)
	if err == nil {
		if err = v.take(len(b)); err != nil {
			return nil, err
		}
	}
	return b, err
}

// errBudget is the error of a string refused for the budget.
var errBudget = errors.New("strings built in one hook call would pass the limit")

// jsonSize estimates val's encoded size (no escapes, at least a byte for a
// number), counted until it passes limit.
func jsonSize(val any, limit int) int {
	switch x := val.(type) {
	case string:
		return len(x) + 2
	case map[string]any:
		n := 2
		for k, e := range x {
			if n > limit {
				break
			}
			n += len(k) + 4 + jsonSize(e, limit-n)
		}
		return n
	case []any:
		n := 2
		for _, e := range x {
			if n > limit {
				break
			}
			n += 1 + jsonSize(e, limit-n)
		}
		return n
	}
	return 4 // a number, true, false or null: at least one byte
}
