package hooks

import (
	"log/slog"
	"runtime"
	"time"
)

// Defaults for Options fields left at their zero value.
const (
	DefaultTimeout         = 50 * time.Millisecond
	DefaultInitTimeout     = time.Second
	DefaultMaxCallDepth    = 200
	DefaultRegistrySize    = 1024 * 4
	DefaultMaxRegistrySize = 1024 * 256
	DefaultMaxStringRep    = 1 << 20
	DefaultMaxStringBytes  = 64 << 20
)

// Options configures an Engine. The zero value is usable: every field has a
// default, stated next to it.
type Options struct {
	// Timeout bounds one hook call, all scripts' handlers for that hook
	// included. The effective deadline is the earlier of the caller's
	// context deadline and now+Timeout. Default 50ms.
	Timeout time.Duration
	// InitTimeout bounds the top-level code of the scripts, which runs once
	// per pooled Lua state when the state is created. Default 1s.
	InitTimeout time.Duration
	// PoolSize is the number of idle Lua states kept for reuse. States are
	// created on demand when the pool is empty, so it does not cap
	// concurrency; it caps the memory held between bursts.
	// Default 2*GOMAXPROCS.
	PoolSize int
	// Logger receives llmproxy.log and print output. Default
	// slog.Default().
	Logger *slog.Logger

	// MaxCallDepth bounds nested Lua calls (lua.Options.CallStackSize);
	// deeper recursion fails with "stack overflow". Default 200.
	MaxCallDepth int
	// RegistrySize is the initial size, in value slots, of a state's Lua
	// value stack (lua.Options.RegistrySize). Default 4096.
	RegistrySize int
	// MaxRegistrySize is the size, in value slots, the value stack may grow
	// to (lua.Options.RegistryMaxSize); beyond it a call fails with
	// "registry overflow". Default 262144.
	MaxRegistrySize int
	// MaxStringRep bounds the length of the string string.rep may build, in
	// bytes. Default 1 MiB.
	MaxStringRep int
	// MaxStringBytes bounds the bytes of the strings one hook call (or a
	// state's top-level code) may build with `..`, string.rep,
	// string.format, string.gsub, table.concat, llmproxy.json_encode and
	// the encoding of a body it changed, all together; past it the call
	// fails naming the limit. Default 64 MiB.
	MaxStringBytes int

	// Now is the clock behind llmproxy.now. Default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.InitTimeout <= 0 {
		o.InitTimeout = DefaultInitTimeout
	}
	if o.PoolSize <= 0 {
		o.PoolSize = 2 * runtime.GOMAXPROCS(0)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxCallDepth <= 0 {
		o.MaxCallDepth = DefaultMaxCallDepth
	}
	if o.RegistrySize <= 0 {
		o.RegistrySize = DefaultRegistrySize
	}
	if o.MaxRegistrySize < o.RegistrySize {
		o.MaxRegistrySize = max(DefaultMaxRegistrySize, o.RegistrySize)
	}
	if o.MaxStringRep <= 0 {
		o.MaxStringRep = DefaultMaxStringRep
	}
	if o.MaxStringBytes <= 0 {
		o.MaxStringBytes = DefaultMaxStringBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// registryGrowStep is how many slots the value stack grows by at a time.
// gopher-lua copies the whole stack on each growth, so a small step makes a
// call that pushes many values (s:byte(1, -1) on a long string) quadratic,
// and a quadratic copy inside one Go function is not stopped by the
// deadline, which is checked between instructions.
func (o Options) registryGrowStep() int {
	return max(o.MaxRegistrySize/16, 1)
}
