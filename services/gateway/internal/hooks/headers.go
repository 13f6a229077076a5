package hooks

import (
	"net/http"

	lua "github.com/yuin/gopher-lua"
)

// headerView lets a script read and edit an http.Header in place. h points
// at the caller's field so that set on a nil Header can allocate one.
type headerView struct {
	h *http.Header
}

// headerMethods are the methods of req.headers and resp.headers. Names are
// case-insensitive (canonicalised as net/http does).
var headerMethods = map[string]lua.LGFunction{
	// get(name) returns the first value, or nil.
	"get": func(L *lua.LState) int {
		hv := checkHeaders(L)
		name := L.CheckString(2)
		if vs := hv.h.Values(name); len(vs) > 0 {
			L.Push(lua.LString(vs[0]))
		} else {
			L.Push(lua.LNil)
		}
		return 1
	},
	// values(name) returns every value as an array (possibly empty).
	"values": func(L *lua.LState) int {
		hv := checkHeaders(L)
		vs := hv.h.Values(L.CheckString(2))
		t := L.CreateTable(len(vs), 0)
		for _, v := range vs {
			t.Append(lua.LString(v))
		}
		L.Push(t)
		return 1
	},
	// set(name, value) replaces the values; a nil value deletes the header.
	"set": func(L *lua.LState) int {
		hv := checkHeaders(L)
		name := L.CheckString(2)
		if L.Get(3) == lua.LNil {
			hv.h.Del(name)
			return 0
		}
		hv.ensure().Set(name, L.CheckString(3))
		return 0
	},
	// add(name, value) appends a value.
	"add": func(L *lua.LState) int {
		hv := checkHeaders(L)
		hv.ensure().Add(L.CheckString(2), L.CheckString(3))
		return 0
	},
	// del(name) deletes the header.
	"del": func(L *lua.LState) int {
		checkHeaders(L).h.Del(L.CheckString(2))
		return 0
	},
}

func (hv *headerView) ensure() http.Header {
	if *hv.h == nil {
		*hv.h = http.Header{}
	}
	return *hv.h
}

func checkHeaders(L *lua.LState) *headerView {
	hv, ok := checkLive(L).(*headerView)
	if !ok {
		L.ArgError(1, "headers expected (use headers:method(...))")
	}
	return hv
}

func (v *vm) newHeaders(h *http.Header) *lua.LUserData {
	return v.issue(&headerView{h: h}, v.headersMT)
}

func (v *vm) newBody(b *jsonBody) *lua.LUserData {
	return v.issue(b, v.bodyMT)
}
