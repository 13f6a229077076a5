package hooks

import (
	"context"
	"encoding/base64"
	"fmt"

	lua "github.com/yuin/gopher-lua"
)

// removedGlobals are base-library functions that reach outside the sandbox
// (files, code loading, the environment of other functions, the collector)
// or print to stdout.
var removedGlobals = []string{
	"dofile", "loadfile", "load", "loadstring", "require", "module",
	"getfenv", "setfenv", "collectgarbage", "newproxy", "_printregs",
	"os", "io", "package", "debug", "coroutine", "channel",
}

// vm is one pooled Lua state with every script's top-level code already run.
// A vm is used by one goroutine at a time.
type vm struct {
	L *lua.LState
	// hooks holds, per hook, the handlers of the scripts that define it, in
	// script order.
	hooks [numHooks][]*lua.LFunction
	// Metatables of the userdata views handed to scripts.
	reqMT, respMT, headersMT, bodyMT *lua.LTable
	// budget is what is left of the current call's string budget, of
	// budgetLimit bytes (see budget.go).
	budget, budgetLimit int
	// concatFn is the checked `..` the compiled scripts call.
	concatFn *lua.LFunction
	// sealed are the read-only views of the shared libraries, by name.
	sealed map[*lua.LTable]string
	// issued are the views (req, resp, their headers and bodies) handed
	// out in the current call; revoke empties them when it ends.
	issued []*lua.LUserData
	// envs are the scripts' global environments, sealed once their
	// top-level code has run.
	envs map[*lua.LTable]bool
}

// newVM builds a sandboxed state and runs every script's top-level code in
// it, each script in its own global environment.
func (e *Engine) newVM() (v *vm, err error) {
	L := lua.NewState(lua.Options{
		SkipOpenLibs:        true,
		CallStackSize:       e.opts.MaxCallDepth,
		RegistrySize:        e.opts.RegistrySize,
		RegistryMaxSize:     e.opts.MaxRegistrySize,
		RegistryGrowStep:    e.opts.registryGrowStep(),
		MinimizeStackMemory: true,
	})
	v = &vm{L: L}
	v.resetBudget(e.opts.MaxStringBytes)
	ctx, cancel := context.WithTimeout(context.Background(), e.opts.InitTimeout)
	defer cancel()
	L.SetContext(ctx)
	running := "" // the script whose top-level code runs
	err = v.protect(func(v *vm) error {
		v.openLibs(e)
		for _, s := range e.scripts {
			running = s.name
			if err := v.runChunk(s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || ctx.Err() != nil {
		L.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("lua init: %w: %s: top-level code ran past %s", ErrTimeout, running, e.opts.InitTimeout)
		}
		return nil, fmt.Errorf("lua init: %s", luaMessage(err))
	}
	L.RemoveContext()
	return v, nil
}

// protect runs fn and turns a panic inside it into an error, so that a bug
// in a library function or in this package fails one call, not the process.
func (v *vm) protect(fn func(v *vm) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return fn(v)
}

func (v *vm) openLibs(e *Engine) {
	L := v.L
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	g := L.G.Global
	for _, name := range removedGlobals {
		g.RawSetString(name, lua.LNil)
	}
	if str, ok := g.RawGetString("string").(*lua.LTable); ok {
		str.RawSetString("dump", lua.LNil)
		format, _ := str.RawGetString("format").(*lua.LFunction)
		for name, fn := range map[string]lua.LGFunction{
			"find": strFind, "match": strMatch, "gmatch": strGmatch, "gsub": v.strGsub,
			"rep": v.rep(e.opts.MaxStringRep), "format": v.format(format.GFunction),
		} {
			str.RawSetString(name, L.NewFunction(fn))
		}
		if fn, ok := str.RawGetString("char").(*lua.LFunction); ok {
			str.RawSetString("char", L.NewFunction(func(L *lua.LState) int {
				v.charge(L, "string.char", L.GetTop())
				return fn.GFunction(L)
			}))
		}
		for _, name := range []string{"upper", "lower", "reverse"} {
			if fn, ok := str.RawGetString(name).(*lua.LFunction); ok {
				str.RawSetString(name, L.NewFunction(v.sized("string."+name, sameSize, fn.GFunction)))
			}
		}
	}
	if tab, ok := g.RawGetString("table").(*lua.LTable); ok {
		tab.RawSetString("concat", L.NewFunction(v.tableConcat))
		// insert, remove and sort write the table raw: on a library
		// view or a script's environment they would leave a value for
		// later requests and other scripts, past the metatables.
		for _, name := range []string{"insert", "remove", "sort"} {
			if fn, ok := tab.RawGetString(name).(*lua.LFunction); ok {
				tab.RawSetString(name, L.NewFunction(v.unsealed("table."+name, fn.GFunction)))
			}
		}
	}
	v.concatFn = L.NewFunction(v.concat)
	g.RawSetString("print", L.NewFunction(e.luaPrint))
	lib := e.library(L)
	lib.RawSetString("json_encode", L.NewFunction(v.jsonEncode))
	lib.RawSetString("json_decode", L.NewFunction(v.sized("llmproxy.json_decode", sameSize, luaJSONDecode)))
	lib.RawSetString("base64_encode", L.NewFunction(v.sized("llmproxy.base64_encode", base64.StdEncoding.EncodedLen, luaBase64Encode)))
	lib.RawSetString("base64_decode", L.NewFunction(v.sized("llmproxy.base64_decode", sameSize, luaBase64Decode)))
	g.RawSetString("llmproxy", lib)
	v.sealLibraries()

	v.headersMT = newMethodsMT(L, "llmproxy.headers", headerMethods)
	v.bodyMT = newMethodsMT(L, "llmproxy.body", bodyMethods)
	v.reqMT = L.NewTable()
	v.reqMT.RawSetString("__index", L.NewFunction(v.reqIndex))
	v.reqMT.RawSetString("__newindex", L.NewFunction(readOnly("req")))
	v.reqMT.RawSetString("__metatable", lua.LFalse)
	v.respMT = L.NewTable()
	v.respMT.RawSetString("__index", L.NewFunction(v.respIndex))
	v.respMT.RawSetString("__newindex", L.NewFunction(v.respNewIndex))
	v.respMT.RawSetString("__metatable", lua.LFalse)
}

// sealedLibraries are the library tables every script of a state shares.
var sealedLibraries = []string{"string", "table", "math", "llmproxy"}

// sealLibraries puts read-only views of the shared library tables in their
// place: the scripts of a state share them, and so do all the requests
// the state serves, so a hook that could write to them could replace
// string.format for every other script, or leave a value in them for a
// later request. Writing to a view (rawset included) is an error, and
// neither a view's metatable nor the strings' (whose __index is the string
// library) can be read or replaced.
//
// rawset on a script's sealed environment (rawset(_G, name, v)) may change
// a global the top-level code defined, as an assignment may, but not add
// one: that would be the undeclared global runChunk refuses.
func (v *vm) sealLibraries() {
	L := v.L
	g := L.G.Global
	views := make(map[*lua.LTable]string, len(sealedLibraries))
	v.sealed = views
	for _, name := range sealedLibraries {
		lib, ok := g.RawGetString(name).(*lua.LTable)
		if !ok {
			continue
		}
		view := L.NewTable()
		mt := L.NewTable()
		mt.RawSetString("__index", lib)
		mt.RawSetString("__newindex", L.NewFunction(readOnly(name)))
		mt.RawSetString("__metatable", lua.LFalse)
		L.SetMetatable(view, mt)
		g.RawSetString(name, view)
		views[view] = name
	}
	if mt, ok := L.GetMetatable(lua.LString("")).(*lua.LTable); ok {
		mt.RawSetString("__metatable", lua.LFalse)
	}
	if rawset, ok := g.RawGetString("rawset").(*lua.LFunction); ok {
		g.RawSetString("rawset", L.NewFunction(func(L *lua.LState) int {
			t := L.CheckTable(1)
			if name, sealed := views[t]; sealed {
				L.RaiseError("%s.%s is read-only", name, L.CheckAny(2).String())
			}
			if v.envs[t] && t.RawGet(L.CheckAny(2)) == lua.LNil {
				L.RaiseError("assignment to undeclared global %q (declare it at top level or use local)", L.CheckAny(2).String())
			}
			L.Push(rawset)
			L.Push(L.Get(1))
			L.Push(L.Get(2))
			L.Push(L.Get(3))
			L.Call(3, 1)
			return 1
		}))
	}
}

// runChunk runs a script's top-level code in a fresh environment whose reads
// fall through to the shared globals, collects its hook functions and then
// seals the environment: a hook that assigns a global the top-level code did
// not define fails, instead of leaking request data into later requests
// served by the same state (the usual missing `local`).
func (v *vm) runChunk(s compiled) error {
	L := v.L
	env := L.NewTable()
	mt := L.NewTable()
	mt.RawSetString("__index", L.G.Global)
	// The metatable is hidden from the top-level code too: its __index
	// is the global table every script of the state reads through, and
	// a script that kept it could replace another's string library, or
	// leave values there for later requests.
	mt.RawSetString("__metatable", lua.LFalse)
	L.SetMetatable(env, mt)
	env.RawSetString("_G", env)
	// The chunk's first statement copies the checked `..` into a local
	// (see boundConcat); the global is gone once the top-level code ran.
	env.RawSetString(concatName, v.concatFn)

	fn := L.NewFunctionFromProto(s.proto)
	fn.Env = env
	L.Push(fn)
	if err := L.PCall(0, 0, nil); err != nil {
		return err
	}
	env.RawSetString(concatName, lua.LNil)
	for i, name := range hookNames {
		switch f := env.RawGetString(name).(type) {
		case *lua.LFunction:
			v.hooks[i] = append(v.hooks[i], f)
		case *lua.LNilType:
		default:
			// A hook name bound to something else is a mistake that
			// would otherwise drop the hook silently — on_auth's check
			// among them.
			return fmt.Errorf("%s: %s is a %s, not a function", s.name, name, f.Type())
		}
	}
	if v.envs == nil {
		v.envs = map[*lua.LTable]bool{}
	}
	v.envs[env] = true
	mt.RawSetString("__newindex", L.NewFunction(func(L *lua.LState) int {
		L.RaiseError("assignment to undeclared global %q (declare it at top level or use local)", L.CheckAny(2).String())
		return 0
	}))
	return nil
}

// unsealed wraps a table function that writes its first argument raw: a
// library view or a script's environment is refused.
func (v *vm) unsealed(name string, fn lua.LGFunction) lua.LGFunction {
	return func(L *lua.LState) int {
		t := L.CheckTable(1)
		if lib, ok := v.sealed[t]; ok {
			L.RaiseError("%s: %s is read-only", name, lib)
		}
		if v.envs[t] {
			L.RaiseError("%s: the global environment cannot be changed this way (declare globals at top level)", name)
		}
		return fn(L)
	}
}

func newMethodsMT(L *lua.LState, name string, methods map[string]lua.LGFunction) *lua.LTable {
	mt := L.NewTable()
	mt.RawSetString("__index", L.SetFuncs(L.NewTable(), methods))
	mt.RawSetString("__metatable", lua.LFalse)
	mt.RawSetString("__tostring", L.NewFunction(func(L *lua.LState) int {
		L.Push(lua.LString(name))
		return 1
	}))
	return mt
}

func readOnly(what string) lua.LGFunction {
	return func(L *lua.LState) int {
		L.RaiseError("%s.%s is read-only", what, L.CheckAny(2).String())
		return 0
	}
}
