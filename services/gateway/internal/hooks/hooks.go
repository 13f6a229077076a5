package hooks

import (
	"context"
	"errors"
	"fmt"
	"math"

	lua "github.com/yuin/gopher-lua"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// Every On* method is safe for concurrent use, returns at once when no
// script defines its hook, and runs the handlers of all scripts that define
// it in script order on one state under one deadline (see Options.Timeout).
// Errors wrap ErrTimeout or ErrScript, or the caller's context error. After
// an error, Body fields are unchanged; header (and response status) edits
// made before the failure may remain, as they are applied in place.

// OnAuth runs on_auth(req). The first script that returns something other
// than nil decides: nil means no opinion (the normal key check applies), an
// Identity with Allowed=false means reject with 401. An error is the
// caller's to act on (refuse, or with lua.fail_open let the key check
// decide).
func (e *Engine) OnAuth(ctx context.Context, r *Request) (*Identity, error) {
	if !e.has[hookAuth] {
		return nil, nil
	}
	var id *Identity
	err := e.run(ctx, hookAuth, func(v *vm) error {
		req, _ := v.newReq(r)
		for _, fn := range v.hooks[hookAuth] {
			ret, err := v.call(fn, req)
			if err != nil {
				return err
			}
			if id, err = identityFrom(ret); err != nil {
				return fmt.Errorf("%s: on_auth: %w", fn.Proto.SourceName, err)
			}
			if id != nil {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return id, nil
}

// OnRequest runs on_request(req). Scripts may edit req.headers (in place)
// and req.body; r.Body is replaced only if a script changed the body. The
// first script that returns a table rejects the request and stops the chain.
func (e *Engine) OnRequest(ctx context.Context, r *Request) (*Rejection, error) {
	if !e.has[hookRequest] {
		return nil, nil
	}
	var (
		rej  *Rejection
		body []byte
	)
	err := e.run(ctx, hookRequest, func(v *vm) error {
		req, rv := v.newReq(r)
		for _, fn := range v.hooks[hookRequest] {
			ret, err := v.call(fn, req)
			if err != nil {
				return err
			}
			if rej, err = rejectionFrom(ret); err != nil {
				return fmt.Errorf("%s: on_request: %w", fn.Proto.SourceName, err)
			}
			if rej != nil {
				break
			}
		}
		var err error
		body, err = rv.result()
		return err
	})
	if err != nil {
		return nil, err
	}
	if body != nil {
		r.Body = body
	}
	return rej, nil
}

// OnRoute runs on_route(req) and returns the backend named by the first
// script that returns a non-empty string; "" means no opinion.
func (e *Engine) OnRoute(ctx context.Context, r *Request) (string, error) {
	if !e.has[hookRoute] {
		return "", nil
	}
	var backend string
	err := e.run(ctx, hookRoute, func(v *vm) error {
		req, _ := v.newReq(r)
		for _, fn := range v.hooks[hookRoute] {
			ret, err := v.call(fn, req)
			if err != nil {
				return err
			}
			switch ret := ret.(type) {
			case *lua.LNilType:
			case lua.LString:
				if backend = string(ret); backend != "" {
					return nil
				}
			default:
				return fmt.Errorf("%s: on_route returned a %s, want a backend name or nil", fn.Proto.SourceName, ret.Type())
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return backend, nil
}

// OnResponse runs on_response(req, resp) for a non-streamed reply. Scripts
// may set resp.status, edit resp.headers (in place) and resp.body; p.Body is
// replaced only if a script changed it. Return values are ignored.
func (e *Engine) OnResponse(ctx context.Context, r *Request, p *Response) error {
	if !e.has[hookResponse] {
		return nil
	}
	var body []byte
	err := e.run(ctx, hookResponse, func(v *vm) error {
		req, _ := v.newReq(r)
		resp, pv := v.newResp(p)
		for _, fn := range v.hooks[hookResponse] {
			if _, err := v.call(fn, req, resp); err != nil {
				return err
			}
		}
		if pv.body != nil && pv.body.changed {
			var err error
			if body, err = pv.body.bytes(); body == nil && err == nil {
				body = []byte{}
			}
			return err
		}
		return nil
	})
	if err == nil && body != nil {
		p.Body = body
	}
	return err
}

// call runs fn with args and returns its first result.
func (v *vm) call(fn *lua.LFunction, args ...lua.LValue) (lua.LValue, error) {
	L := v.L
	L.Push(fn)
	for _, a := range args {
		L.Push(a)
	}
	if err := L.PCall(len(args), 1, nil); err != nil {
		return nil, err
	}
	ret := L.Get(-1)
	L.Pop(1)
	return ret, nil
}

// result returns the body a script changed, or nil when it did not.
func (rv *reqView) result() ([]byte, error) {
	if rv.body == nil || !rv.body.changed {
		return nil, nil
	}
	b, err := rv.body.bytes()
	if b == nil && err == nil {
		b = []byte{}
	}
	return b, err
}

// identityFrom reads on_auth's result: nil, false, or a table
// {id=, name=, user_id=, limits={name=number}, allowed=bool (default true)}.
func identityFrom(ret lua.LValue) (*Identity, error) {
	switch ret := ret.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		if !ret {
			return &Identity{Allowed: false}, nil
		}
		return nil, errors.New("returned true, want nil, false or an identity table")
	case *lua.LTable:
		id := &Identity{Allowed: ret.RawGetString("allowed") != lua.LFalse}
		for _, f := range []struct {
			name string
			to   *string
		}{{"id", &id.ID}, {"name", &id.Name}, {"user_id", &id.UserID}} {
			var err error
			if *f.to, err = optString(ret, f.name); err != nil {
				return nil, err
			}
		}
		if id.ID != "" && !validID(id.ID) {
			return nil, fmt.Errorf("returned id %s, want at most %d bytes and no spaces or control characters "+
				"(it names the identity's events' subject and its limits' state)", quoteID(id.ID), maxIDLen)
		}
		if config.ReservedKeyID(id.ID) {
			// Its requests would be counted, limited and listed with
			// those of no key, and left out of the webhooks that skip
			// them.
			return nil, fmt.Errorf("returned id %s, which the gateway gives requests without a key of their own; no identity may take it", quoteID(id.ID))
		}
		switch lim := ret.RawGetString("limits").(type) {
		case *lua.LNilType:
		case *lua.LTable:
			id.Limits = make(map[string]float64)
			var err error
			lim.ForEach(func(k, x lua.LValue) {
				if err != nil {
					return
				}
				name := k.String()
				whole, known := LimitNames[name]
				n, ok := x.(lua.LNumber)
				f := float64(n)
				switch {
				case !known:
					err = fmt.Errorf("limits.%s is not a limit", name)
				case !ok || math.IsNaN(f) || math.IsInf(f, 0):
					err = fmt.Errorf("limits.%s is a %s, want a number", name, x.Type())
				case f < 0:
					err = fmt.Errorf("limits.%s is %v, want 0 or more", name, f)
				case whole && f != math.Trunc(f):
					err = fmt.Errorf("limits.%s is %v, want a whole number", name, f)
				default:
					id.Limits[name] = f
				}
			})
			if err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("limits is a %s, want a table", lim.Type())
		}
		return id, nil
	}
	return nil, fmt.Errorf("returned a %s, want nil, false or an identity table", ret.Type())
}

// rejectionFrom reads on_request's result: nil, or a table
// {status=, message=, code=} with the Default* values for missing fields.
func rejectionFrom(ret lua.LValue) (*Rejection, error) {
	switch ret := ret.(type) {
	case *lua.LNilType:
		return nil, nil
	case *lua.LTable:
		rej := &Rejection{Status: DefaultRejectStatus}
		var err error
		if rej.Message, err = optString(ret, "message"); err != nil {
			return nil, err
		}
		if rej.Code, err = optString(ret, "code"); err != nil {
			return nil, err
		}
		switch st := ret.RawGetString("status").(type) {
		case *lua.LNilType:
		case lua.LNumber:
			if f := float64(st); f < 400 || f > 599 || f != math.Trunc(f) {
				return nil, fmt.Errorf("rejection status %v, want 400..599", f)
			}
			rej.Status = int(st)
		default:
			return nil, fmt.Errorf("status is a %s, want a number", st.Type())
		}
		if rej.Message == "" {
			rej.Message = DefaultRejectMessage
		}
		if rej.Code == "" {
			rej.Code = DefaultRejectCode
		}
		return rej, nil
	}
	return nil, fmt.Errorf("returned a %s, want nil or a rejection table", ret.Type())
}

// optString reads a string field of a returned table: a string, a number
// (as Lua's tostring writes it) or nil (""). Any other type is an error,
// not a silent default.
func optString(t *lua.LTable, key string) (string, error) {
	switch x := t.RawGetString(key).(type) {
	case *lua.LNilType:
		return "", nil
	case lua.LString:
		return string(x), nil
	case lua.LNumber:
		return x.String(), nil
	default:
		return "", fmt.Errorf("%s is a %s, want a string", key, x.Type())
	}
}

// maxIDLen bounds an identity's id, as config.KeyIDPattern bounds a key's.
const maxIDLen = 64

// validID reports whether id may name an identity: at most maxIDLen bytes,
// none a space or a control character. An id from a client's header, say,
// could otherwise make an event subject longer than NATS takes, which
// closes the publishing connection, or split a log line. (The characters
// NATS gives meaning to, '.', '*' and '>', are replaced in subjects.)
func validID(id string) bool {
	if len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// quoteID quotes an id for an error, its first 64 bytes at most.
func quoteID(id string) string {
	if len(id) > maxIDLen {
		return fmt.Sprintf("%q… (%d bytes)", id[:maxIDLen], len(id))
	}
	return fmt.Sprintf("%q", id)
}
