package hooks

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// jsonBody is a request or response body as a script sees it. It is decoded
// on first use and re-encoded only if a script changed it, so a hook that
// only reads (or does not touch the body) costs no JSON work.
type jsonBody struct {
	raw      []byte
	val      any
	err      error // decoding error of raw
	decoded  bool
	changed  bool // the result differs from the original bytes
	valDirty bool // val holds changes not yet encoded into raw
	// v charges the encoding to its call's string budget; nil charges
	// nothing.
	v *vm
}

func newJSONBody(raw []byte) *jsonBody { return &jsonBody{raw: raw} }

func (b *jsonBody) value() (any, error) {
	if !b.decoded {
		b.decoded = true
		if len(bytes.TrimSpace(b.raw)) > 0 {
			b.val, b.err = decodeJSON(b.raw)
		}
	}
	return b.val, b.err
}

// bytes returns the current body: the original bytes unless a script
// changed it.
func (b *jsonBody) bytes() ([]byte, error) {
	if b.valDirty {
		var enc []byte
		var err error
		if b.v != nil {
			enc, err = b.v.encode(b.val)
		} else {
			enc, err = encodeJSON(b.val)
		}
		if err != nil {
			return nil, fmt.Errorf("encode body: %w", err)
		}
		b.raw, b.valDirty = enc, false
	}
	return b.raw, nil
}

// get returns the value at a dotted path ("stream_options.include_usage",
// "messages.1.content"; array indexes are 1-based as in Lua), or nil when
// the path or the body is missing or the body is not JSON.
func (b *jsonBody) get(path string) any {
	cur, err := b.value()
	if err != nil {
		return nil
	}
	for _, seg := range strings.Split(path, ".") {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[seg]
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 1 || i > len(c) {
				return nil
			}
			cur = c[i-1]
		default:
			return nil
		}
	}
	return cur
}

// set stores x at a dotted path, creating missing objects on the way; a nil
// x deletes the key (or array element). An empty body becomes an object.
func (b *jsonBody) set(path string, x any) error {
	cur, err := b.value()
	if err != nil {
		return fmt.Errorf("body is not JSON: %w", err)
	}
	if cur == nil {
		cur = map[string]any{}
	}
	if path == "" {
		return errors.New("empty path")
	}
	next, err := setIn(cur, strings.Split(path, "."), x)
	if err != nil {
		return fmt.Errorf("set %q: %w", path, err)
	}
	b.replace(next)
	return nil
}

func (b *jsonBody) replace(v any) {
	b.val, b.err, b.decoded = v, nil, true
	b.changed, b.valDirty = true, true
}

func (b *jsonBody) setRaw(raw []byte) {
	b.raw, b.val, b.err, b.decoded = raw, nil, nil, false
	b.changed, b.valDirty = true, false
}

// setIn sets x under segs in cur and returns cur, or the container that
// replaces it when an array grew.
func setIn(cur any, segs []string, x any) (any, error) {
	seg, last := segs[0], len(segs) == 1
	switch c := cur.(type) {
	case nil:
		if x == nil {
			return nil, nil // deleting under a missing path: nothing to do
		}
		return setIn(map[string]any{}, segs, x)
	case map[string]any:
		if last {
			if x == nil {
				delete(c, seg)
			} else {
				c[seg] = x
			}
			return c, nil
		}
		child, err := setIn(c[seg], segs[1:], x)
		if err != nil {
			return nil, err
		}
		if child != nil {
			c[seg] = child
		}
		return c, nil
	case []any:
		i, err := strconv.Atoi(seg)
		if err != nil || i < 1 || i > len(c)+1 {
			return nil, fmt.Errorf("array index %q out of range 1..%d", seg, len(c)+1)
		}
		if last {
			switch {
			case x == nil && i <= len(c):
				return append(c[:i-1], c[i:]...), nil
			case x == nil:
				return c, nil
			case i == len(c)+1:
				return append(c, x), nil
			}
			c[i-1] = x
			return c, nil
		}
		var child any
		if i <= len(c) {
			child = c[i-1]
		}
		if child, err = setIn(child, segs[1:], x); err != nil {
			return nil, err
		}
		switch {
		case child == nil:
		case i == len(c)+1:
			c = append(c, child)
		default:
			c[i-1] = child
		}
		return c, nil
	}
	return nil, fmt.Errorf("%q is inside a %T, not an object or array", seg, cur)
}

// bodyMethods are the methods of req.body, resp.body and ev.request_body.
var bodyMethods = map[string]lua.LGFunction{
	"get": func(L *lua.LState) int {
		b := checkBody(L)
		L.Push(toLua(L, b.get(L.CheckString(2))))
		return 1
	},
	"set": func(L *lua.LState) int {
		b := checkBody(L)
		path := L.CheckString(2)
		x, err := fromLua(L.Get(3), 0)
		if err == nil {
			err = b.set(path, x)
		}
		if err != nil {
			L.RaiseError("body:set: %v", err)
		}
		return 0
	},
	"table": func(L *lua.LState) int {
		v, _ := checkBody(L).value()
		L.Push(toLua(L, v))
		return 1
	},
	"replace": func(L *lua.LState) int {
		b := checkBody(L)
		x, err := fromLua(L.CheckTable(2), 0)
		if err != nil {
			L.RaiseError("body:replace: %v", err)
		}
		b.replace(x)
		return 0
	},
	"raw": func(L *lua.LState) int {
		b := checkBody(L)
		raw, err := b.bytes()
		if err != nil {
			L.RaiseError("body:raw: %v", err)
		}
		// Each call copies the body into a new string.
		if b.v != nil {
			b.v.charge(L, "body:raw", len(raw))
		}
		L.Push(lua.LString(raw))
		return 1
	},
	"set_raw": func(L *lua.LState) int {
		b := checkBody(L)
		b.setRaw([]byte(L.CheckString(2)))
		return 0
	},
}

func checkBody(L *lua.LState) *jsonBody {
	b, ok := checkLive(L).(*jsonBody)
	if !ok {
		L.ArgError(1, "body expected (use body:method(...))")
	}
	return b
}
