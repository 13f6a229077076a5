package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
	"github.com/llmproxy/llmproxy/services/gateway/internal/hooks"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

// hookRequest is the view of x a script gets. Headers are the request's
// own, so on_request edits apply in place.
func (g *Gateway) hookRequest(r *http.Request, x *exchange) *hooks.Request {
	hr := &hooks.Request{
		Method:   r.Method,
		Path:     x.path,
		Headers:  r.Header,
		ClientIP: x.clientIP.String(),
		Body:     x.body,
	}
	if x.key != nil {
		hr.Key = hooks.KeyInfo{ID: x.key.ID, Name: x.key.Name, UserID: x.key.UserID}
	}
	return hr
}

// hookContext is ctx for a hook call of x's request: what a script logs
// (llmproxy.log, print) goes without the request's keys, which it can read
// from the headers.
func (x *exchange) hookContext(ctx context.Context) context.Context {
	if x.secret == "" && x.otherSecret == "" {
		return ctx
	}
	return hooks.WithRedactor(ctx, x.withoutKeys)
}

// luaRejection is the client's error for an on_request rejection, typed
// as OpenAI types its own errors of that status; a 429 says when to retry
// (1 s: the script gave no time), as every other 429 does.
func luaRejection(rej *hooks.Rejection) *apierr.Error {
	e := &apierr.Error{Status: rej.Status, Type: "invalid_request_error", Code: rej.Code, Message: rej.Message}
	switch {
	case rej.Status == http.StatusUnauthorized:
		e.Type = "authentication_error"
	case rej.Status == http.StatusForbidden:
		e.Type = "permission_error"
	case rej.Status == http.StatusTooManyRequests:
		e.Type, e.RetryAfter = "rate_limit_error", 1
	case rej.Status >= 500:
		e.Type = "api_error"
	}
	return e
}

// luaError maps a failed hook call to the client's error; the script's
// message (file:line) goes to the log only.
func (g *Gateway) luaError(x *exchange, hook string, err error) *apierr.Error {
	if errors.Is(err, context.Canceled) {
		// The client left while the hook ran, which stopped it: not
		// the script's failure.
		return apierr.ClientClosed()
	}
	// A script's error() text may quote the key it saw (the
	// Authorization header): the log gets it without.
	// At most a line per 10 s: a broken script fails every request.
	g.logFailure(slog.LevelError, "lua hook failed", "request_id", x.requestID, "hook", hook, "err", x.withoutKeys(err.Error()))
	code, e := "lua_error", apierr.Internal("lua_error", "a gateway script ("+hook+") failed")
	if errors.Is(err, hooks.ErrTimeout) {
		code, e = "lua_timeout", apierr.Internal("lua_timeout", "a gateway script ("+hook+") ran past its time limit")
	}
	g.countLuaError(hook, err)
	if hook == hooks.HookResponse {
		// The request was admitted and answered: its reply is what
		// failed, not its admission.
		return e
	}
	return g.reject(code, e)
}

// countLuaError counts a failed call of hook in llmproxy_lua_errors_total.
func (g *Gateway) countLuaError(hook string, err error) {
	reason := "error"
	if errors.Is(err, hooks.ErrTimeout) {
		reason = "timeout"
	}
	g.metrics.luaErrors.WithLabelValues(hook, reason).Inc()
}

// identityKey turns an on_auth identity into a key with the script's
// limits, filled from the config's defaults where the script is silent.
// The limits resolve as a file key's own do (keys.Limits.Apply): an
// identity with limits is limited even when rate_limit.per_key sets none
// or is switched off, and then has only its own.
func identityKey(rt *runtime, id *hooks.Identity) *auth.Key {
	cfg := rt.cfg
	k := &auth.Key{
		ID:     id.ID,
		Name:   id.Name,
		UserID: id.UserID,
		Period: cfg.Auth.Defaults.QuotaResetPeriod,
		Quota:  cfg.Auth.Defaults.TotalQuota,
		Limits: cfg.RateLimit.PerKey,
	}
	if k.ID == "" {
		k.ID = "lua"
	}
	if k.Period == "" {
		k.Period = "monthly"
	}
	if len(id.Limits) > 0 {
		if !k.Limits.IsEnabled() {
			k.Limits = config.PerKeyLimits{}
		}
		on := true
		k.Limits.Enabled = &on
	}
	for name, v := range id.Limits {
		switch name {
		case "requests_per_second":
			k.Limits.RequestsPerSecond = v
		case "requests_per_minute":
			k.Limits.RequestsPerMinute = int64(v)
		case "tokens_per_minute":
			k.Limits.TokensPerMinute = int64(v)
		case "max_concurrent":
			k.Limits.MaxConcurrent = int64(v)
		case "total_quota":
			k.Quota = int64(v)
		}
	}
	return k
}

// maxHookBody bounds a non-streamed reply held for on_response.
const maxHookBody = 16 << 20

// relayWithHook answers a non-streamed reply after on_response has seen
// (and possibly rewritten) it. Streams never come here. A failed read of
// the reply (the read timeout, the backend breaking it off) is returned
// and fails the try: nothing goes to the client before the whole reply
// has been read.
func (g *Gateway) relayWithHook(r *http.Request, w http.ResponseWriter, x *exchange, resp *http.Response, format usage.Format) error {
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHookBody+1))
	if err != nil {
		return err
	}
	if len(body) == 0 && endsAtClose(resp) {
		return errEndedAtHead
	}
	x.firstByte(resp.StatusCode)
	if err != nil || len(body) > maxHookBody {
		e := apierr.BadGateway("the backend's reply could not be read")
		if len(body) > maxHookBody {
			e = apierr.BadGateway("the backend's reply is too large for on_response")
		}
		g.failForward(w, x, e)
		return nil
	}
	if encs := resp.Header.Values("Content-Encoding"); len(encs) == 1 && strings.EqualFold(strings.TrimSpace(encs[0]), "identity") {
		resp.Header.Del("Content-Encoding") // none, as the relay reads it
	}
	if encs := resp.Header.Values("Content-Encoding"); len(encs) == 1 && !strings.Contains(encs[0], ",") {
		enc := encs[0]
		// The gateway asked for the reply uncompressed (a script
		// reads it); a backend that compressed it anyway has it
		// decompressed here, for the script and the bill, and the
		// client gets it so. One the gateway cannot read goes as it
		// came.
		if plain, ok := decodeWhole(enc, body, maxHookBody); ok {
			body = plain
			resp.Header.Del("Content-Encoding")
		} else if plain != nil {
			g.failForward(w, x, apierr.BadGateway("the backend's reply is too large for on_response"))
			return nil
		}
	}
	if enc := resp.Header.Values("Content-Encoding"); len(enc) > 0 && len(body) > 0 {
		// Still encoded (br, two encodings, bytes not of their
		// encoding): the script would get bytes it cannot read, and
		// the policy it applies would not be.
		g.failForward(w, x, apierr.BadGateway("the backend's reply is in an encoding on_response cannot read ("+strings.Join(enc, ", ")+")"))
		return nil
	}
	ex := usage.NewExtractor(format, usage.Options{})
	ex.ResponseHeader(resp.Header)
	if resp.Header.Get("Content-Encoding") == "" {
		ex.Body(body)
	}
	hresp := &hooks.Response{Status: resp.StatusCode, Headers: resp.Header, Body: body}
	if err := x.rt.lua.OnResponse(x.hookContext(r.Context()), g.hookRequest(r, x), hresp); err != nil {
		g.failForward(w, x, g.luaError(x, hooks.HookResponse, err))
		return nil
	}
	copyResponseHeader(w.Header(), hresp.Headers)
	w.Header().Set("Content-Length", strconv.Itoa(len(hresp.Body)))
	// The head is only buffered until the body's first write (or the
	// handler's return): committing after it still has the event durable
	// before the client has the reply, and a panic writing it is
	// recorded as the nothing the client got.
	w.WriteHeader(hresp.Status)
	x.status, x.engineStatus = hresp.Status, resp.StatusCode
	// The capture is the reply as the client gets it.
	x.replyBody = hresp.Body
	x.result, x.delivered = ex.Result(), true
	if x.commit != nil {
		x.commit()
	}
	if hresp.Status == http.StatusNoContent || hresp.Status == http.StatusNotModified {
		return nil // no body goes with these
	}
	pace := newSendPace(responseController(w), x.rt.sendTimeout, x.conn)
	defer pace.done()
	pace.arm()
	if _, err := w.Write(hresp.Body); err != nil {
		x.errMsg = pace.clientWriteError(err)
	}
	x.result = ex.Result()
	x.delivered = true
	return nil
}
