package hooks

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// library builds the llmproxy global table of helpers.
func (e *Engine) library(L *lua.LState) *lua.LTable {
	lib := L.SetFuncs(L.NewTable(), map[string]lua.LGFunction{
		"log":           e.luaLog,
		"now":           e.luaNow,
		"json_decode":   luaJSONDecode,
		"sha256":        luaSHA256,
		"hmac_sha256":   luaHMACSHA256,
		"secure_equal":  luaSecureEqual,
		"base64_encode": luaBase64Encode,
		"base64_decode": luaBase64Decode,
	})
	installJSONMarkers(L, lib)
	return lib
}

func (e *Engine) logger(L *lua.LState) (context.Context, *slog.Logger) {
	ctx := L.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	return ctx, e.opts.Logger.With("at", strings.TrimSuffix(L.Where(1), ":"))
}

type redactorKey struct{}

// WithRedactor returns ctx carrying redact, which llmproxy.log and print
// apply to a hook's text before it is logged: the caller's way to keep
// what a script copies there (the request's API key, from its headers)
// out of the log.
func WithRedactor(ctx context.Context, redact func(string) string) context.Context {
	return context.WithValue(ctx, redactorKey{}, redact)
}

// redacted is msg as the redactor of ctx leaves it, if it has one.
func redacted(ctx context.Context, msg string) string {
	if f, ok := ctx.Value(redactorKey{}).(func(string) string); ok {
		return f(msg)
	}
	return msg
}

// luaLog is llmproxy.log(level, msg): level is "debug", "info", "warn" or
// "error" (anything else logs at info).
func (e *Engine) luaLog(L *lua.LState) int {
	level := slog.LevelInfo
	switch L.CheckString(1) {
	case "debug":
		level = slog.LevelDebug
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	msg := L.ToStringMeta(L.Get(2)).String()
	ctx, log := e.logger(L)
	log.Log(ctx, level, redacted(ctx, msg))
	return 0
}

// luaPrint replaces print, which would write to the process's stdout, with a
// debug log line.
func (e *Engine) luaPrint(L *lua.LState) int {
	parts := make([]string, L.GetTop())
	for i := range parts {
		parts[i] = L.ToStringMeta(L.Get(i + 1)).String()
	}
	ctx, log := e.logger(L)
	log.Log(ctx, slog.LevelDebug, redacted(ctx, strings.Join(parts, "\t")))
	return 0
}

// luaNow is llmproxy.now(): unix time in seconds, with a fraction.
func (e *Engine) luaNow(L *lua.LState) int {
	L.Push(lua.LNumber(float64(e.opts.Now().UnixNano()) / 1e9))
	return 1
}

// luaJSONDecode is llmproxy.json_decode(s): a value, or nil and a message.
func luaJSONDecode(L *lua.LState) int {
	v, err := decodeJSON([]byte(L.CheckString(1)))
	if err != nil {
		L.Push(lua.LNil)
		L.Push(lua.LString(err.Error()))
		return 2
	}
	L.Push(toLua(L, v))
	return 1
}

func luaSHA256(L *lua.LState) int {
	sum := sha256.Sum256([]byte(L.CheckString(1)))
	L.Push(lua.LString(hex.EncodeToString(sum[:])))
	return 1
}

func luaHMACSHA256(L *lua.LState) int {
	m := hmac.New(sha256.New, []byte(L.CheckString(1)))
	m.Write([]byte(L.CheckString(2)))
	L.Push(lua.LString(hex.EncodeToString(m.Sum(nil))))
	return 1
}

// luaSecureEqual compares two strings in constant time, for signatures.
func luaSecureEqual(L *lua.LState) int {
	a, b := L.CheckString(1), L.CheckString(2)
	L.Push(lua.LBool(subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1))
	return 1
}

func luaBase64Encode(L *lua.LState) int {
	L.Push(lua.LString(base64.StdEncoding.EncodeToString([]byte(L.CheckString(1)))))
	return 1
}

// luaBase64Decode accepts standard and URL alphabets, padded or not; it
// returns nil and a message on bad input.
func luaBase64Decode(L *lua.LState) int {
	s := strings.TrimRight(L.CheckString(1), "=")
	enc := base64.RawStdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.RawURLEncoding
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		L.Push(lua.LNil)
		L.Push(lua.LString(err.Error()))
		return 2
	}
	L.Push(lua.LString(b))
	return 1
}
