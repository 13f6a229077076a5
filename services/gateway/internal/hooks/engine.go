// Package hooks runs operator-supplied Lua scripts at fixed points of a
// request: on_auth, on_request, on_route, on_response and on_complete.
//
// Scripts are compiled once by Load. Every call borrows a sandboxed Lua state
// from a pool, runs the hook under a deadline and returns the state to the
// pool, or drops it when the call failed or timed out. See README.md for the
// Lua-side API.
package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

// Hook names, as scripts define them.
const (
	HookAuth     = "on_auth"
	HookRequest  = "on_request"
	HookRoute    = "on_route"
	HookResponse = "on_response"
	HookComplete = "on_complete"
)

// hookNames lists the hooks in the order of the hook* indexes.
var hookNames = [...]string{HookAuth, HookRequest, HookRoute, HookResponse, HookComplete}

const (
	hookAuth = iota
	hookRequest
	hookRoute
	hookResponse
	hookComplete
	numHooks
)

// ErrTimeout is returned (wrapped) when a hook runs past its deadline. The
// proxy answers such a request with 500 and code "lua_timeout".
var ErrTimeout = errors.New("lua hook timed out")

// ErrScript is returned (wrapped) when a hook raises an error, returns a value
// of the wrong shape or panics. The message carries the script's file:line.
var ErrScript = errors.New("lua hook failed")

// Script is one compiled-to-be Lua chunk. Name is used in error messages
// (file:line: message) and is normally the file's path.
type Script struct {
	Name   string
	Source string
}

type compiled struct {
	name  string
	proto *lua.FunctionProto
}

// Engine holds compiled scripts and a pool of Lua states that have run them.
// It is safe for concurrent use.
//
// An Engine is immutable: to reload scripts (SIGHUP), build a new Engine with
// Load and swap it into an atomic.Pointer[Engine]. Calls in flight finish on
// the old Engine; its pooled states are then garbage. No request is dropped.
type Engine struct {
	opts    Options
	scripts []compiled
	has     [numHooks]bool
	pool    chan *vm
}

// Load reads and compiles the script files at paths and returns an Engine
// that runs them in order. A syntax error is reported as "file:line: message";
// an error raised by a script's top-level code is reported the same way.
func Load(paths []string, opts Options) (*Engine, error) {
	scripts := make([]Script, 0, len(paths))
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read lua script: %w", err)
		}
		scripts = append(scripts, Script{Name: p, Source: string(src)})
	}
	return New(scripts, opts)
}

// New is Load for scripts already in memory.
func New(scripts []Script, opts Options) (*Engine, error) {
	e := &Engine{opts: opts.withDefaults()}
	for _, s := range scripts {
		proto, err := compile(s)
		if err != nil {
			return nil, err
		}
		e.scripts = append(e.scripts, compiled{name: s.Name, proto: proto})
	}
	e.pool = make(chan *vm, e.opts.PoolSize)
	// The first state proves the top-level code runs and tells which hooks
	// exist; it becomes the first pooled state.
	v, err := e.newVM()
	if err != nil {
		return nil, err
	}
	for i := range v.hooks {
		e.has[i] = len(v.hooks[i]) > 0
	}
	e.put(v)
	return e, nil
}

func compile(s Script) (*lua.FunctionProto, error) {
	chunk, err := parse.Parse(strings.NewReader(s.Source), s.Name)
	if err != nil {
		var perr *parse.Error
		if errors.As(err, &perr) {
			if perr.Pos.Line == parse.EOF {
				return nil, fmt.Errorf("%s: at end of file: %s", s.Name, perr.Message)
			}
			// A literal may be a secret the script keeps (a tenant's
			// signing key): config check and a refused reload print
			// this message.
			if strings.Contains(perr.Message, "string") {
				return nil, fmt.Errorf("%s:%d: %s", s.Name, perr.Pos.Line, perr.Message)
			}
			if stringToken(s.Source, perr) {
				return nil, fmt.Errorf("%s:%d: %s near a string literal", s.Name, perr.Pos.Line, perr.Message)
			}
			return nil, fmt.Errorf("%s:%d: %s near '%s'", s.Name, perr.Pos.Line, perr.Message, perr.Token)
		}
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	proto, err := lua.Compile(boundConcat(chunk), s.Name)
	if err != nil {
		var cerr *lua.CompileError
		if errors.As(err, &cerr) {
			return nil, fmt.Errorf("%s:%d: %s", s.Name, cerr.Line, cerr.Message)
		}
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	return proto, nil
}

// stringToken reports whether the token a parse error is near is a string
// literal: the message says so rather than quote it.
func stringToken(source string, perr *parse.Error) bool {
	lines := strings.Split(source, "\n")
	if perr.Pos.Line < 1 || perr.Pos.Line > len(lines) || perr.Token == "" {
		return false
	}
	line := lines[perr.Pos.Line-1]
	return strings.Contains(line, `"`+perr.Token) || strings.Contains(line, `'`+perr.Token) || strings.Contains(line, "[["+perr.Token)
}

// Has reports whether any script defines hook (one of the Hook* names). The
// proxy checks it to skip a hook, and its cost, entirely.
func (e *Engine) Has(hook string) bool {
	switch hook {
	case HookAuth:
		return e.has[hookAuth]
	case HookRequest:
		return e.has[hookRequest]
	case HookRoute:
		return e.has[hookRoute]
	case HookResponse:
		return e.has[hookResponse]
	case HookComplete:
		return e.has[hookComplete]
	}
	return false
}

// Close drops the idle states. Calls in flight are unaffected; later calls
// build new states.
func (e *Engine) Close() {
	for {
		select {
		case v := <-e.pool:
			v.L.Close()
		default:
			return
		}
	}
}

func (e *Engine) get() (*vm, error) {
	select {
	case v := <-e.pool:
		return v, nil
	default:
		return e.newVM()
	}
}

func (e *Engine) put(v *vm) {
	select {
	case e.pool <- v:
	default:
		v.L.Close()
	}
}

// run borrows a state and runs fn on it under the hook deadline. A state on
// which fn failed is closed rather than pooled: its stacks may hold a
// half-finished call and its globals may be half-updated.
//
// The hook's deadline starts once it has a state: a state made for a burst
// of requests is bounded by InitTimeout, and the time it takes to make is
// not the script's.
func (e *Engine) run(ctx context.Context, hook int, fn func(v *vm) error) error {
	name := hookNames[hook]
	v, err := e.get()
	if err != nil {
		if errors.Is(err, ErrTimeout) {
			return fmt.Errorf("lua %s: %w", name, err)
		}
		return fmt.Errorf("%w: %s: %v", ErrScript, name, err)
	}
	deadline := time.Now().Add(e.opts.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	callCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	v.L.SetContext(callCtx)
	v.resetBudget(e.opts.MaxStringBytes)
	err = v.protect(fn)
	v.revoke()
	// A script can catch the deadline's error with pcall and return
	// normally; a call that outlived its deadline is a timeout all the same.
	if err == nil && callCtx.Err() == nil {
		v.L.RemoveContext()
		e.put(v)
		return nil
	}
	v.L.Close()
	switch {
	case errors.Is(callCtx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: %s after %s", ErrTimeout, name, e.opts.Timeout)
	case ctx.Err() != nil:
		return fmt.Errorf("lua %s: %w", name, ctx.Err())
	}
	if err == nil {
		err = callCtx.Err()
	}
	return fmt.Errorf("%w: %s: %s", ErrScript, name, luaMessage(err))
}

// luaMessage is the message of a Lua error without the stack trace, which
// would bloat logs; the message starts with file:line.
func luaMessage(err error) string {
	var aerr *lua.ApiError
	if errors.As(err, &aerr) && aerr.Object != nil {
		if t, ok := aerr.Object.(*lua.LTable); ok {
			// error({code = 418}): the table, not its address.
			if val, err := fromLua(t, 0); err == nil {
				if b, err := encodeJSON(val); err == nil {
					const max = 512
					if len(b) > max {
						return "error value " + strings.ToValidUTF8(string(b[:max]), "") + "…"
					}
					return "error value " + string(b)
				}
			}
		}
		return aerr.Object.String()
	}
	return err.Error()
}
