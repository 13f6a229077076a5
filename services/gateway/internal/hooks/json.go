package hooks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	lua "github.com/yuin/gopher-lua"
)

// maxDepth bounds the nesting converted between Lua and Go values; it also
// stops a table that contains itself.
const maxDepth = 64

// decodeJSON decodes with json.Number so that numbers a script does not
// touch are re-encoded exactly as they came.
func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("invalid JSON: data after the top-level value")
	}
	return v, nil
}

// encodeJSON encodes without HTML escaping: bodies go to model servers, not
// into HTML pages.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Registry keys of the JSON markers, set up by installJSONMarkers.
const (
	regNull    = "llmproxy.null"
	regArrayMT = "llmproxy.array_mt"
	regBigMT   = "llmproxy.bignumber_mt"
	arrayField = "__jsonarray"
)

// jsonNull is the Value of the llmproxy.null userdata.
type jsonNull struct{}

// jsonBigNumber is the Value of a userdata that stands for a JSON number a
// float64 cannot hold (1e400): a script sees its text through tostring,
// and it goes back into JSON as it came instead of as +Inf or a string.
type jsonBigNumber json.Number

// installJSONMarkers creates the two values that make JSON round trips
// faithful: llmproxy.null stands for a null inside a decoded table (a Lua
// nil would drop the key or punch a hole in an array), and the array
// metatable marks decoded arrays so that they stay arrays when emptied.
func installJSONMarkers(L *lua.LState, lib *lua.LTable) {
	null := L.NewUserData()
	null.Value = jsonNull{}
	mt := L.NewTable()
	mt.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString("null"))
		return 1
	}))
	mt.RawSetString("__metatable", lua.LFalse)
	null.Metatable = mt
	// The array metatable is shared by every array of every request the
	// state serves: scripts can neither read nor replace it, or one
	// request could change how later ones' arrays index and encode.
	arrayMT := L.NewTable()
	arrayMT.RawSetString(arrayField, lua.LTrue)
	arrayMT.RawSetString("__metatable", lua.LFalse)
	bigMT := L.NewTable()
	bigMT.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		n, _ := L.CheckUserData(1).Value.(jsonBigNumber)
		L.Push(lua.LString(n))
		return 1
	}))
	bigMT.RawSetString("__metatable", lua.LFalse)
	L.G.Registry.RawSetString(regNull, null)
	L.G.Registry.RawSetString(regArrayMT, arrayMT)
	L.G.Registry.RawSetString(regBigMT, bigMT)
	lib.RawSetString("null", null)
	lib.RawSetString("array", L.NewFunction(func(L *lua.LState) int {
		t := L.OptTable(1, nil)
		if t == nil {
			t = L.NewTable()
		}
		t.Metatable = arrayMT
		L.Push(t)
		return 1
	}))
}

// toLua converts a decoded JSON value to a Lua value. Objects and arrays
// become fresh tables, arrays marked as such; a null is nil at the top level
// and llmproxy.null inside a table.
func toLua(L *lua.LState, v any) lua.LValue {
	if v == nil {
		return lua.LNil
	}
	return toLuaIn(L, v)
}

func toLuaIn(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return L.G.Registry.RawGetString(regNull)
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if errors.Is(err, strconv.ErrRange) && math.IsInf(f, 0) {
			ud := L.NewUserData()
			ud.Value = jsonBigNumber(v)
			if mt, ok := L.G.Registry.RawGetString(regBigMT).(*lua.LTable); ok {
				ud.Metatable = mt
			}
			return ud
		}
		if err != nil {
			return lua.LString(v)
		}
		return lua.LNumber(f)
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case map[string]any:
		t := L.CreateTable(0, len(v))
		for k, x := range v {
			t.RawSetString(k, toLuaIn(L, x))
		}
		return t
	case []any:
		t := L.CreateTable(len(v), 0)
		for _, x := range v {
			t.Append(toLuaIn(L, x))
		}
		t.Metatable = L.G.Registry.RawGetString(regArrayMT)
		return t
	}
	return lua.LString(fmt.Sprint(v))
}

// fromLua converts a Lua value to a JSON-encodable Go value. A table with
// the array metatable (decoded arrays, llmproxy.array) is an array of its
// elements 1..#t; another table whose keys are exactly 1..n (n > 0) is an
// array too; any other table, the empty one included, is an object with its
// keys turned into strings. llmproxy.null and nil inside an array are null.
func fromLua(v lua.LValue, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("value nested too deeply (or contains itself)")
	}
	switch v := v.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		return bool(v), nil
	case lua.LString:
		return string(v), nil
	case lua.LNumber:
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("cannot encode %v as JSON", f)
		}
		if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return json.Number(strconv.FormatInt(int64(f), 10)), nil
		}
		return f, nil
	case *lua.LTable:
		return tableFromLua(v, depth)
	case *lua.LUserData:
		switch x := v.Value.(type) {
		case jsonNull:
			return nil, nil
		case jsonBigNumber:
			return json.Number(x), nil
		}
	}
	return nil, fmt.Errorf("cannot encode a %s as JSON", v.Type())
}

func tableFromLua(t *lua.LTable, depth int) (any, error) {
	n := t.MaxN()
	count := 0
	var err error
	t.ForEach(func(lua.LValue, lua.LValue) { count++ })
	isArray := n > 0 && n == count
	if mt, ok := t.Metatable.(*lua.LTable); ok && mt.RawGetString(arrayField) == lua.LTrue {
		isArray = true
	}
	if isArray {
		arr := make([]any, n)
		for i := range n {
			if arr[i], err = fromLua(t.RawGetInt(i+1), depth+1); err != nil {
				return nil, err
			}
		}
		return arr, nil
	}
	obj := make(map[string]any, count)
	t.ForEach(func(k, x lua.LValue) {
		if err != nil {
			return
		}
		var key string
		switch k := k.(type) {
		case lua.LString:
			key = string(k)
		case lua.LNumber:
			key = k.String()
		default:
			err = fmt.Errorf("cannot encode a table with %s keys as JSON", k.Type())
			return
		}
		var gv any
		if gv, err = fromLua(x, depth+1); err == nil {
			obj[key] = gv
		}
	})
	if err != nil {
		return nil, err
	}
	return obj, nil
}
