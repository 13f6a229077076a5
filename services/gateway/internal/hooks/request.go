package hooks

import (
	"net/http"

	lua "github.com/yuin/gopher-lua"
)

// Request is what a hook sees of a client request. Hooks that may change it
// (on_request) change Headers in place and replace Body; the caller must
// recompute Content-Length from len(Body) afterwards.
type Request struct {
	Method   string
	Path     string
	Headers  http.Header
	ClientIP string
	// Key is the authenticated key; empty in on_auth and when auth is off.
	Key KeyInfo
	// Body is the JSON request body, possibly empty.
	Body []byte
}

// KeyInfo names the API key a request was authenticated with. It never
// holds the secret.
type KeyInfo struct {
	ID     string
	Name   string
	UserID string
}

// Response is a non-streamed backend reply. on_response may change Status,
// Headers (in place) and Body; the caller must recompute Content-Length.
type Response struct {
	Status  int
	Headers http.Header
	Body    []byte
}

// Identity is what on_auth decided. Allowed=false means reject with 401.
type Identity struct {
	ID     string
	Name   string
	UserID string
	// Limits are the script's limits by name, one of LimitNames. Each is a
	// whole number except requests_per_second, which may have a fraction.
	Limits  map[string]float64
	Allowed bool
}

// Rejection is on_request's refusal of a request.
type Rejection struct {
	Status  int    // default 403
	Message string // default "request rejected by policy"
	Code    string // default "lua_rejected"
}

// Defaults of a Rejection's fields a script leaves out.
const (
	DefaultRejectStatus  = http.StatusForbidden
	DefaultRejectMessage = "request rejected by policy"
	DefaultRejectCode    = "lua_rejected"
)

// reqView backs the req userdata of one call.
type reqView struct {
	r       *Request
	body    *jsonBody
	bodyUD  lua.LValue
	hdrUD   lua.LValue
	keyTbl  lua.LValue
	headers *http.Header
}

func (v *vm) newReq(r *Request) (*lua.LUserData, *reqView) {
	rv := &reqView{r: r, headers: &r.Headers}
	ud := v.issue(rv, v.reqMT)
	return ud, rv
}

// reqIndex is req's __index: fields are built on first access, so a hook
// pays only for what it reads.
func (v *vm) reqIndex(L *lua.LState) int {
	rv, ok := checkLive(L).(*reqView)
	if !ok {
		L.ArgError(1, "req expected")
	}
	switch L.CheckString(2) {
	case "method":
		L.Push(lua.LString(rv.r.Method))
	case "path":
		L.Push(lua.LString(rv.r.Path))
	case "client_ip":
		L.Push(lua.LString(rv.r.ClientIP))
	case "headers":
		if rv.hdrUD == nil {
			rv.hdrUD = v.newHeaders(rv.headers)
		}
		L.Push(rv.hdrUD)
	case "body":
		if rv.bodyUD == nil {
			rv.body = newJSONBody(rv.r.Body)
			rv.body.v = v
			rv.bodyUD = v.newBody(rv.body)
		}
		L.Push(rv.bodyUD)
	case "key":
		if rv.keyTbl == nil {
			t := L.CreateTable(0, 3)
			t.RawSetString("id", lua.LString(rv.r.Key.ID))
			t.RawSetString("name", lua.LString(rv.r.Key.Name))
			t.RawSetString("user_id", lua.LString(rv.r.Key.UserID))
			rv.keyTbl = t
		}
		L.Push(rv.keyTbl)
	default:
		L.Push(lua.LNil)
	}
	return 1
}

// respView backs the resp userdata of one on_response call.
type respView struct {
	r      *Response
	body   *jsonBody
	bodyUD lua.LValue
	hdrUD  lua.LValue
}

func (v *vm) newResp(r *Response) (*lua.LUserData, *respView) {
	rv := &respView{r: r}
	ud := v.issue(rv, v.respMT)
	return ud, rv
}

func checkResp(L *lua.LState) *respView {
	rv, ok := checkLive(L).(*respView)
	if !ok {
		L.ArgError(1, "resp expected")
	}
	return rv
}

func (v *vm) respIndex(L *lua.LState) int {
	rv := checkResp(L)
	switch L.CheckString(2) {
	case "status":
		L.Push(lua.LNumber(rv.r.Status))
	case "headers":
		if rv.hdrUD == nil {
			rv.hdrUD = v.newHeaders(&rv.r.Headers)
		}
		L.Push(rv.hdrUD)
	case "body":
		if rv.bodyUD == nil {
			rv.body = newJSONBody(rv.r.Body)
			rv.body.v = v
			rv.bodyUD = v.newBody(rv.body)
		}
		L.Push(rv.bodyUD)
	default:
		L.Push(lua.LNil)
	}
	return 1
}

// respNewIndex is resp's __newindex: only status is assignable.
func (v *vm) respNewIndex(L *lua.LState) int {
	rv := checkResp(L)
	if key := L.CheckString(2); key != "status" {
		L.RaiseError("resp.%s is read-only (use resp.headers / resp.body methods)", key)
	}
	// A 1xx is not a final status: net/http would send it as an interim
	// response and the reply after it as a 200.
	st := L.CheckInt(3)
	if st < 200 || st > 999 {
		L.RaiseError("resp.status %d out of range 200..999", st)
	}
	rv.r.Status = st
	return 0
}

// LimitNames are the limits on_auth may return, and whether each must be a
// whole number.
var LimitNames = map[string]bool{
	"requests_per_second": false,
	"requests_per_minute": true,
	"tokens_per_minute":   true,
	"max_concurrent":      true,
	"total_quota":         true,
}

// issue makes the userdata of a view handed to the current call; revoke
// takes its value away when the call ends.
func (v *vm) issue(value any, mt *lua.LTable) *lua.LUserData {
	ud := v.L.NewUserData()
	ud.Value = value
	ud.Metatable = mt
	v.issued = append(v.issued, ud)
	return ud
}

// revokedView is the value of a view whose call has ended.
type revokedView struct{}

// revoke empties the views the call that just ended was handed. A script
// that kept one in a global (`last = req`) would otherwise read and write
// the headers and body of a request that has moved on — its own or
// another's, from another goroutine: the state is pooled, the request is
// not.
func (v *vm) revoke() {
	for i, ud := range v.issued {
		ud.Value = revokedView{}
		v.issued[i] = nil
	}
	v.issued = v.issued[:0]
}

// checkLive is the value of the view userdata at argument 1, failing the
// call with a clear error when the view's own call has ended.
func checkLive(L *lua.LState) any {
	val := L.CheckUserData(1).Value
	if _, gone := val.(revokedView); gone {
		L.RaiseError("a request or response object was used after the hook it was given to returned (keep what it holds, not the object)")
	}
	return val
}
