package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
	"github.com/llmproxy/llmproxy/services/gateway/internal/balancer"
	"github.com/llmproxy/llmproxy/services/gateway/internal/hooks"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redact"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

// exchange is the state of one request as it passes through the gateway.
type exchange struct {
	rt        *runtime
	start     time.Time
	requestID string
	// clientRequestID is the client's own X-Request-Id, if it sent one.
	clientRequestID string
	// w is the client's response writer (its connection's read deadline
	// paces the request body).
	w           http.ResponseWriter
	conn        net.Conn // the client's connection (ConnContext); nil without it
	clientIP    netip.Addr
	peer        netip.Addr // the connection's peer
	peerTrusted bool       // peer is one of the trusted proxies
	key         *auth.Key
	masked      string
	// secret is the key the client sent (bearer), read once: looked up,
	// and kept out of its X-Request-Id and its body.
	secret string
	// otherSecret is another key the client sent in x-api-key beside the
	// one it authenticates with, kept out of what scripts' text logs (set
	// only when scripts are loaded).
	otherSecret string
	// unauthenticated is set when on_auth refused the request or failed
	// on it: its event is "unauthenticated" even with auth off.
	unauthenticated bool
	path            string
	body            []byte
	info            usage.RequestInfo
	// hideUsage is set when the gateway asked the backend for a usage
	// chunk the client did not ask for; the chunk is then not relayed.
	hideUsage bool
	// eventBody, when set, is the request body the event carries: the
	// client's, before the gateway added stream_options for the backend.
	eventBody []byte
	// route is the backend an on_route script chose ("" = none).
	route string
	// adm is what admission granted (nil when nothing was admitted).
	adm      *admission
	upstream *balancer.Upstream
	// sent is when the last try was sent to upstream.
	sent   time.Time
	status int
	// engineStatus is the status of the reply relayed, as the engine
	// sent it (status is the client's, which on_response may change).
	engineStatus int
	ttft         time.Duration
	result       usage.Result
	// body is the non-stream reply (decompressed, bounded), kept for
	// response capture; replyCut says the reply went on past it. With
	// replyLeft, the client left having got its first replyGot bytes.
	replyBody []byte
	replyCut  bool
	replyLeft bool
	replyGot  int
	// streamed is set when the reply was SSE or NDJSON.
	streamed  bool
	source    string
	errMsg    string
	delivered bool
	// aborted is set when the backend broke off a reply the client cannot
	// be told of in band (not an uncompressed stream, which ends with an
	// error event): its response is cut, once recorded, so that it does
	// not end as if whole.
	aborted bool
	// commit settles the request's accounting (its event is durable on
	// return); the relay calls it just before the reply's last bytes, so a
	// client never holds a complete reply whose event a crash could lose.
	commit    func()
	committed bool
	// wake is the sink whose sender a committed exchange's finish left
	// asleep, to be woken once the reply is out.
	wake durableSink
	// What finish recorded, for observe once the reply is complete.
	billed       usage.Result
	latency      time.Duration
	keyID, model string
	// observed is set once observe has counted x.
	observed bool
	// journaled is set once x's stream has an entry in the in-flight
	// journal; checkpointAt is when its next checkpoint is due, and
	// journalText how much of its kept text the journal has had.
	journaled    bool
	checkpointAt time.Time
	journalText  int
}

// captures reports whether x's response content goes into its event:
// logging.capture_response, or the key's own setting.
func (x *exchange) captures() bool {
	if x.key != nil && x.key.Capture != nil {
		return *x.key.Capture
	}
	return x.rt.capture
}

// capture puts the response content into ev when capture is on, and
// removes configured secrets from everything ev carries. The stream's text
// was assembled from the bytes already passing the usage scanner.
func (g *Gateway) capture(x *exchange, ev *events.RequestCompleted, res usage.Result) {
	red := x.rt.redact
	if len(ev.RequestBody) > 0 && !red.Empty() {
		ev.RequestBody = red.JSON(ev.RequestBody)
	}
	if !x.captures() || !x.delivered {
		return
	}
	c := &events.CapturedResponse{}
	if x.streamed || x.replyBody == nil {
		c.Content, c.Truncated = redactThenCut(red, res.Text, x.rt.maxCapture)
		c.Truncated = c.Truncated || res.TextTruncated
	} else if x.replyLeft {
		// What the client got past what is captured is not redacted.
		got := min(x.replyGot, x.rt.maxCapture+captureRedactMargin)
		c.Content, _ = cutAt(redactedAsGot(red, x.replyBody, got), x.rt.maxCapture)
		c.Truncated = true
	} else {
		body := x.replyBody
		if len(body) <= x.rt.maxCapture && !x.replyCut {
			c.Content = string(red.JSON(body))
		} else {
			body = body[:min(len(body), x.rt.maxCapture+captureRedactMargin)]
			c.Content, _ = cutAt(red.CutJSON(string(body)), x.rt.maxCapture)
			c.Truncated = true
		}
	}
	// The request's own key, which a backend may write back (as written
	// or in JSON's escapes), is not published with the reply.
	if x.secret != "" || x.otherSecret != "" {
		c.Content = x.withoutKeys(textWithoutKey(c.Content, x.secret))
	}
	ev.Response = c
}

// redactedAsGot is the reply body a client left after its first got bytes,
// redacted, as far as the client got it: the part it got redacted alone
// would keep the start of a secret the cut split, which the rules no longer
// find, and the reply redacted further on is cut at no place that maps to
// got. What both redactions agree on is kept: the part the client got, up
// to the first place a secret (or a redacted field) runs past its end.
func redactedAsGot(red *redact.Redactor, body []byte, got int) string {
	got = min(got, len(body))
	part := red.CutJSON(string(body[:got]))
	whole := red.CutJSON(string(body[:min(len(body), got+captureRedactMargin)]))
	n := 0
	for n < len(part) && n < len(whole) && part[n] == whole[n] {
		n++
	}
	for n > 0 && n < len(part) && !utf8.RuneStart(part[n]) {
		n--
	}
	// got itself may split a character: its first bytes go too.
	for i := 0; i < utf8.UTFMax-1 && n > 0; i++ {
		if r, size := utf8.DecodeLastRuneInString(part[:n]); r != utf8.RuneError || size != 1 {
			break
		}
		n--
	}
	return part[:n]
}

// captureRedactMargin is how much text past logging.max_capture_bytes a
// captured reply keeps until it is redacted: a secret that the cut would
// split is then whole when the rules look for it (a rule with a minimum
// length, sk-[A-Za-z0-9]{20,}, finds no cut-off start), so that no part of
// a secret up to this long is published.
const captureRedactMargin = 1 << 10

// redactThenCut removes red's secrets from text, then cuts it to max bytes
// on a UTF-8 boundary; cut reports whether it did.
func redactThenCut(red *redact.Redactor, text string, max int) (out string, cut bool) {
	return cutAt(red.Text(text), max)
}

// cutAt cuts out, a redacted text, to max bytes on a UTF-8 boundary;
// cut reports whether it did.
func cutAt(out string, max int) (string, bool) {
	if len(out) <= max {
		return out, false
	}
	n := max
	for n > 0 && !utf8.RuneStart(out[n]) {
		n--
	}
	return out[:n], true
}

// UnauthenticatedKeyID is the key id of events of requests refused for want
// of a valid key.
const UnauthenticatedKeyID = events.UnauthenticatedKeyID

// durableSink is an EventSink that can make an event durable before it
// returns (the gateway's outbox publisher), and hold back the start of its
// publishing until Wake.
type durableSink interface {
	PublishDurable(ev *events.RequestCompleted)
	AppendDurable(ev *events.RequestCompleted) bool
	Wake()
}

// traceID is the id the client and the backend see: the client's own, else
// the gateway's.
func (x *exchange) traceID() string {
	if x.clientRequestID != "" {
		return x.clientRequestID
	}
	return x.requestID
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// begin starts the exchange of r: the runtime it keeps to its end, its ids
// and its client address.
func (g *Gateway) begin(w http.ResponseWriter, r *http.Request) *exchange {
	x := &exchange{rt: g.rt.Load(), start: g.now(), path: r.URL.Path, w: w, conn: clientConn(r)}
	// The request id names the request in the ledger, so it is always the
	// gateway's own: a client reusing an id must not share a lease, a
	// reservation or a dedupe entry. The client's X-Request-Id is kept for
	// tracing: echoed back, sent to the backend and recorded in the event.
	x.requestID = g.reqIDs.next()
	x.secret = bearer(r)
	if x.rt.lua != nil {
		// Only scripts' text is scrubbed of it (withoutKeys).
		if k := strings.TrimSpace(r.Header.Get("X-Api-Key")); k != x.secret {
			x.otherSecret = k
		}
	}
	if id := r.Header.Get("X-Request-Id"); validRequestID(id) && !requestIDHoldsKey(id, x.secret) {
		x.clientRequestID = id
	}
	w.Header().Set("X-Request-Id", x.traceID())
	w.Header().Set("X-LLMProxy-Request-Id", x.requestID)
	x.clientIP, x.peer, x.peerTrusted = x.rt.ips.Resolve(r)
	return x
}

// refusedUnadmitted reports a request refused before it was admitted or
// any backend asked: it billed nothing and holds no reservation, so no
// usage depends on its event.
func (x *exchange) refusedUnadmitted() bool {
	return x.upstream == nil && x.adm == nil && x.status >= 400
}

// requestBody is the request body the event carries: as the client sent
// it (after any on_request rewrite), without what the gateway added.
func (x *exchange) requestBody() []byte {
	if x.eventBody != nil {
		return x.eventBody
	}
	return x.body
}

// serveProxy is the request path of DESIGN §4.
func (g *Gateway) serveProxy(w http.ResponseWriter, r *http.Request) {
	g.inflight.Add(1)
	defer g.inflight.Add(-1)
	x := g.begin(w, r)
	// end records x if the handler panics, anywhere from here on, and
	// gives the key's concurrency slot back (its renewals would otherwise
	// hold it for as long as the process lives).
	defer g.end(x)
	if e := g.prepare(r, x); e != nil {
		g.release(x)
		if x.body == nil && r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody && r.ProtoMajor == 1 {
			// Refused before its body was read (a bad key, a body
			// declared too large): net/http would read what is left
			// of it before sending the reply, so a client that stops
			// sending would have neither the reply nor the connection
			// back, past every timeout. The reply goes now, and the
			// connection closes after it. net/http still reads what
			// is left of the body at the handler's end, so that a
			// client whose whole body is on its way has it taken
			// rather than reset: for refusedBodyLinger at most. (HTTP/2
			// answers a stream at once, and would take the header
			// for a GOAWAY of the whole connection.)
			w.Header().Set("Connection", "close")
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(refusedBodyLinger))
		}
		g.fail(w, x, e)
		return
	}
	// commit runs once: from the relay just before the reply's last bytes,
	// or here when the relay did not get that far. The lease goes back
	// with the event, so a client that sends its next request the moment
	// it has this reply finds its concurrency slot free.
	x.commit = func() {
		if !x.committed {
			x.committed = true
			g.finish(r.Context(), x)
			g.release(x)
		}
	}
	g.forward(w, r, x)
	x.commit()
	g.observe(x)
	if x.aborted {
		// net/http cuts the connection (or resets the HTTP/2 stream)
		// without ending the reply: a chunked body gets no last chunk.
		panic(http.ErrAbortHandler)
	}
}

// end is deferred by every handler of the request path once x has begun.
// A request observed by then only needs its sender woken: the sender
// starts on the event once the reply is out, as waking it earlier would
// cost the reply a thread wake-up (the event itself is in the outbox
// before the last bytes). Only a panic gets here unobserved, from auth,
// the Lua hooks, admission, routing, the relay or the models list: the
// request is still recorded, its event (what was served is billed,
// estimated where no usage was read; one that was committed already
// stands), the metrics and the access line, before the panic goes on to
// net/http, which drops the connection. Its status is what the client
// got: 500 (error internal_error) when no reply head went out, else the
// head's. The panic is not recovered, so the server logs its own stack.
// Last, end releases whatever x still holds.
func (g *Gateway) end(x *exchange) {
	if !x.observed {
		if !x.committed {
			if x.errMsg == "" {
				x.errMsg = "internal_error"
			}
			if x.status == 0 {
				x.status = http.StatusInternalServerError
			}
			x.committed = true
			g.finish(context.Background(), x)
		}
		g.observe(x)
	}
	x.wakeSender()
	g.release(x)
}

func (x *exchange) wakeSender() {
	if x.wake != nil {
		x.wake.Wake()
	}
}

// withoutKeys is s without the keys the client sent (see withoutKey): the
// one it authenticates with and another in x-api-key beside it, which a
// script's text may quote.
func (x *exchange) withoutKeys(s string) string {
	a, b := x.secret, x.otherSecret
	if len(b) > len(a) {
		a, b = b, a // the longer first: one may start with the other
	}
	return withoutKey(withoutKey(s, a), b)
}

// scrubSecret takes the request's key out of x's body, and out of the
// model read from it, which goes into the event, the access line and
// routing's errors: a key sent in the body, or as the model, or copied
// there by an on_request script, reaches none of them, nor the backend.
func (x *exchange) scrubSecret() {
	if x.body == nil {
		return
	}
	x.body = scrubBodySecret(x.body, x.secret)
	if holdsKey(x.info.Model, x.secret) || strings.Contains(x.info.Model, keys.SecretPrefix) {
		// The key presented, or a key made by `llmproxy keys` (a
		// client that put its key in the wrong field, with none or
		// another in its header).
		x.info.Model = redact.Placeholder
	}
}

// requestIDHoldsKey reports whether a client's X-Request-Id holds the key
// the request presents, or a key made by `llmproxy keys`, as written or
// percent-encoded: such an id is not kept (sent on, recorded).
func requestIDHoldsKey(id, secret string) bool {
	if holdsKey(id, secret) || strings.Contains(id, keys.SecretPrefix) {
		return true
	}
	if strings.IndexByte(id, '%') >= 0 {
		if d, err := url.PathUnescape(id); err == nil && (holdsKey(d, secret) || strings.Contains(d, keys.SecretPrefix)) {
			return true
		}
	}
	return false
}

// prepare authenticates, reads and checks the request, and runs the
// on_auth, on_request and on_route hooks.
func (g *Gateway) prepare(r *http.Request, x *exchange) *apierr.Error {
	rt := x.rt
	lua := rt.lua
	luaAuth := lua != nil && lua.Has(hooks.HookAuth)
	if luaAuth {
		// on_auth may read the body: read it first.
		if e := g.readRequest(r, x); e != nil {
			return e
		}
	}
	// on_auth runs with auth off too (no api_keys: a script may be the
	// only authentication); its "no opinion" then lets the request in.
	if rt.authOn || luaAuth {
		if e := g.authenticate(r, x, luaAuth); e != nil {
			return e
		}
	}
	if x.key != nil {
		// Disabled, expired or from an address it may not be used from:
		// refused before its body is read (without on_auth), which such
		// a client might hold back for body_timeout.
		if e := x.key.Check(g.now(), x.clientIP); e != nil {
			return g.reject(e.Code, e)
		}
	}
	if !luaAuth {
		if e := g.readRequest(r, x); e != nil {
			return e
		}
	}
	if lua != nil && lua.Has(hooks.HookRequest) {
		hr := g.hookRequest(r, x)
		rej, err := lua.OnRequest(x.hookContext(r.Context()), hr)
		if err != nil {
			return g.luaError(x, hooks.HookRequest, err)
		}
		if rej != nil {
			// A script that quotes the key in its refusal (the
			// Authorization header it sees) does not send it to the
			// event, the log or back.
			rej.Message, rej.Code = x.withoutKeys(rej.Message), x.withoutKeys(rej.Code)
			return g.reject("lua_rejected", luaRejection(rej))
		}
		if !bytes.Equal(hr.Body, x.body) {
			info, err := usage.ParseRequest(hr.Body)
			if err == nil && notUTF8(hr.Body) != nil {
				err = errors.New("not UTF-8")
			}
			if err != nil {
				// The script's failure, logged and counted as any other
				// (the parse error names no secret: no body bytes).
				g.log.Error("lua hook failed", "request_id", x.requestID, "hook", hooks.HookRequest,
					"err", "the body it set is not a request the gateway can read: "+err.Error())
				g.countLuaError(hooks.HookRequest, err)
				return g.reject("lua_error", apierr.Internal("lua_error", "on_request produced a body that is not valid JSON"))
			}
			// A script that copied the key into the body (from the
			// Authorization header it sees) is scrubbed as the client's
			// body was: the headers are, after the hook, on the way out.
			x.body, x.info = hr.Body, info
			x.scrubSecret()
		}
		r.Header = hr.Headers
	}
	if x.path == "/api/show" && x.info.Model == "" {
		// Ollama's show takes the model as "name" too (its older field),
		// and answers 400 without either.
		name, e := showName(x.body)
		if e != nil {
			return g.reject(e.Code, e)
		}
		if x.info.Model = name; name == "" {
			return g.reject("model_required", apierr.BadRequest("model_required", "model is required"))
		}
	}
	if x.key != nil && r.Method == http.MethodPost {
		// Every POST endpoint runs a model; the model lists (GET
		// /v1/models, /api/tags) name none and are not refused.
		if e := x.key.CheckModel(x.info.Model); e != nil {
			return g.reject(e.Code, e)
		}
	}
	if e := g.admit(r.Context(), x); e != nil {
		return e
	}
	if lua != nil && lua.Has(hooks.HookRoute) {
		name, err := lua.OnRoute(x.hookContext(r.Context()), g.hookRequest(r, x))
		if err != nil {
			return g.luaError(x, hooks.HookRoute, err)
		}
		x.route = name
	}
	if x.info.Stream && isOpenAIStreamPath(x.path) && !x.info.IncludeUsage {
		if nb, added, err := usage.AddIncludeUsage(x.body); err == nil && added {
			x.eventBody, x.body, x.hideUsage = x.body, nb, true
		}
	}
	return nil
}

// authenticate finds the request's key, or lets on_auth decide.
func (g *Gateway) authenticate(r *http.Request, x *exchange, luaAuth bool) *apierr.Error {
	if luaAuth {
		id, err := x.rt.lua.OnAuth(x.hookContext(r.Context()), g.hookRequest(r, x))
		if err == nil && id != nil && id.Allowed {
			// The identity's id, name and user name the caller in
			// events, logs and counters: a script that gave one of
			// them the caller's secret would put the key in all of them.
			for _, f := range [...]struct{ name, v string }{{"id", id.ID}, {"name", id.Name}, {"user_id", id.UserID}} {
				if x.withoutKeys(f.v) != f.v {
					err = fmt.Errorf("%w: on_auth: the identity's %s holds the request's API key; name the caller, not its secret", hooks.ErrScript, f.name)
					break
				}
			}
		}
		if err != nil && (!x.rt.cfg.Lua.FailOpen || errors.Is(err, context.Canceled)) {
			x.unauthenticated = true
			return g.luaError(x, hooks.HookAuth, err)
		}
		if err != nil {
			// lua.fail_open: the key check decides, as for no opinion
			// (an identity the script gave is not used). The script's
			// text may quote the key it saw: the log gets it without.
			id = nil
			g.countLuaError(hooks.HookAuth, err)
			g.logFailure(slog.LevelWarn, "lua on_auth failed; failing open", "request_id", x.requestID, "err", x.withoutKeys(err.Error()))
		}
		if id != nil {
			if !id.Allowed {
				x.unauthenticated = true
				return g.reject("lua_auth", apierr.Unauthorized("the request was not authenticated"))
			}
			x.key = identityKey(x.rt, id)
			x.masked = "lua:" + id.ID
			return nil
		}
		if !x.rt.authOn {
			return nil
		}
	}
	secret := x.secret
	if secret == "" {
		return g.reject("missing_key", apierr.Unauthorized("no API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"))
	}
	x.masked = auth.Mask(secret)
	var key *auth.Key
	var err error
	if cs := x.rt.clientKeys; cs != nil {
		key, err = cs.LookupHashFrom(r.Context(), auth.HashSecret(secret), x.clientIP)
	} else {
		key, err = x.rt.keys.LookupHash(r.Context(), auth.HashSecret(secret))
	}
	if err != nil {
		if errors.Is(err, auth.ErrUnknownKey) {
			return g.reject("invalid_key", apierr.Unauthorized("invalid API key "+x.masked))
		}
		var limited *auth.LookupsLimitedError
		if errors.As(err, &limited) {
			return g.reject("key_lookup_rate", lookupsLimited(x.rt.cfg, limited))
		}
		g.logFailure(slog.LevelError, "key lookup failed", "request_id", x.requestID, "err", err)
		return g.reject("key_store_unavailable", apierr.Unavailable("key_store_unavailable", "the key store is unavailable; try again shortly"))
	}
	x.key = key
	return nil
}

// readRequest reads and parses the request body (POST only).
func (g *Gateway) readRequest(r *http.Request, x *exchange) *apierr.Error {
	if r.Method != http.MethodPost || x.body != nil {
		return nil
	}
	if compressedBody(r.Header) {
		return g.reject("unsupported_encoding", apierr.UnsupportedEncoding())
	}
	limit := x.rt.maxBody
	if r.ContentLength > limit {
		return g.reject("body_too_large", apierr.TooLarge(limit))
	}
	pb := pacedBody{r: r.Body, timeout: x.rt.bodyTimeout}
	if x.w != nil && pb.timeout > 0 {
		pb.rc = http.NewResponseController(x.w)
	}
	body, err := readBody(&pb, r.ContentLength, limit)
	pb.done(err)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return g.reject("body_too_large", apierr.TooLarge(limit))
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return g.reject("body_timeout", apierr.BodyTimeout(pb.timeout))
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || r.Context().Err() != nil {
			// The connection ended before the body did: the client
			// left (or broke off its own request), nothing it sent is wrong.
			return &apierr.Error{Status: 499, Type: "invalid_request_error", Code: "client_closed_request",
				Message: "the connection closed before the request body ended"}
		}
		return apierr.BadRequest("invalid_body", "could not read the request body")
	}
	if e := notUTF8(body); e != nil {
		return g.reject(e.Code, e)
	}
	info, err := usage.ParseRequest(body)
	if err != nil {
		e := invalidBody(body, err)
		return g.reject(e.Code, e)
	}
	x.body, x.info = body, info
	// Scrubbed at once: every refusal from here on (a model too long, a
	// key refused after on_auth read the body) records the model.
	x.scrubSecret()
	if n := len(info.Model); n > maxModelBytes {
		// A model name goes into the event, the access line and the
		// metrics' errors whole: one of a megabyte would make the event
		// too large to publish, and the request would go unbilled. The
		// event keeps its first bytes (of the model as scrubbed).
		if m := x.info.Model; len(m) > maxModelBytes {
			x.info.Model = clip(strings.ToValidUTF8(m[:maxModelBytes], ""), maxModelBytes)
		}
		return g.reject("invalid_model", apierr.BadRequest("invalid_model",
			"the model name is "+strconv.Itoa(n)+" bytes long; at most "+strconv.Itoa(maxModelBytes)))
	}
	return nil
}

// maxModelBytes bounds a request's model name (Hugging Face ids are at
// most 96 characters; a GGUF path a few hundred).
const maxModelBytes = 512

// invalidBody is the 400 for a request body ParseRequest refused, said as
// OpenAI says it: an empty body, a body that is JSON but not an object, a
// field of the wrong type (named, with the type it must have), or JSON
// that does not parse. No Go type or field name reaches the client.
func invalidBody(body []byte, err error) *apierr.Error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	var ae *usage.AmbiguousFieldError
	switch {
	case len(bytes.TrimSpace(body)) == 0:
		return apierr.BadRequest("invalid_json", "the request body is empty: send a JSON object")
	case errors.Is(err, usage.ErrNotObject):
		return apierr.BadRequest("invalid_json", "the request body must be a JSON object")
	case errors.As(err, &te) && te.Field != "":
		if f := fieldAt(body, te.Offset); f != "" {
			te.Field = f
		}
		return typeMismatch(te, "")
	case errors.As(err, &ae):
		return apierr.BadRequest("ambiguous_field", ae.Error()+": engines disagree on which counts; send it once")
	case errors.As(err, &se):
		return apierr.BadRequest("invalid_json", "the request body is not valid JSON: "+se.Error()+" (at byte "+strconv.FormatInt(se.Offset, 10)+")")
	}
	return apierr.BadRequest("invalid_json", "the request body is not valid JSON")
}

// typeMismatch is the 400 invalid_type for te, a field of the wrong type,
// said as OpenAI says it: the field (where it is, when in is set) and the
// JSON type it takes, no Go type or field name.
func typeMismatch(te *json.UnmarshalTypeError, in string) *apierr.Error {
	field := "'" + te.Field + "'"
	if in != "" {
		field += " in " + in
	}
	kind := jsonKind(te.Type)
	if n, ok := strings.CutPrefix(te.Value, "number "); ok && kind == "an integer" && n != "" && strings.Trim(n, "0123456789") == "" {
		// An integer, too large for the field: not a type error to
		// the client's eyes.
		kind = "an integer below 2^63"
	}
	return apierr.BadRequest("invalid_type", "invalid type for "+field+": expected "+kind+", but got "+jsonValue(te.Value)+" instead")
}

// fieldAt returns where in the JSON document body the value whose token
// ends at off is, as OpenAI writes it ("messages[1].content"): off is
// where a json.UnmarshalTypeError points, past a scalar or past an object's
// or an array's opening bracket. Keys are as the client wrote them. It
// returns "" when no value's token ends there, or the value is the
// document itself.
func fieldAt(body []byte, off int64) string {
	type frame struct {
		array   bool
		index   int
		key     string
		wantKey bool
	}
	var stack []frame
	path := func() string {
		var b strings.Builder
		for i, f := range stack {
			switch {
			case f.array:
				b.WriteString("[" + strconv.Itoa(f.index) + "]")
			case i > 0:
				b.WriteString("." + f.key)
			default:
				b.WriteString(f.key)
			}
		}
		return b.String()
	}
	// next moves the innermost container past a value that has ended.
	next := func() {
		if n := len(stack); n > 0 {
			if stack[n-1].array {
				stack[n-1].index++
			} else {
				stack[n-1].wantKey = true
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		if n := len(stack); n > 0 && !stack[n-1].array && stack[n-1].wantKey {
			if k, ok := tok.(string); ok {
				stack[n-1].key, stack[n-1].wantKey = k, false
				continue
			}
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			next()
			continue
		}
		if dec.InputOffset() == off {
			return path()
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, frame{wantKey: true})
		case json.Delim('['):
			stack = append(stack, frame{array: true})
		default:
			next()
		}
	}
}

// jsonKind names the JSON type a value of Go type t is read from.
func jsonKind(t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return "another type"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	}
	return "another type"
}

// jsonValue says what an UnmarshalTypeError's Value ("string", "number
// 1.5", "bool", ...) was; a number is quoted unless it is long (a body of
// digits is not sent back).
func jsonValue(v string) string {
	kind, n, _ := strings.Cut(v, " ")
	switch kind {
	case "number":
		if n != "" && len(n) <= 32 {
			return "the number " + n
		}
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "object":
		return "an object"
	case "array":
		return "an array"
	}
	return v
}

// compressedBody reports whether h, a request's headers, says its body is
// in a content coding other than identity. The gateway reads the body's
// JSON as it is, so a gzip body would only be refused as invalid JSON, and
// the backends (vLLM, TGI, Ollama) do not decompress requests either.
func compressedBody(h http.Header) bool {
	for _, v := range h.Values("Content-Encoding") {
		for v != "" {
			var c string
			c, v, _ = strings.Cut(v, ",")
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return true
			}
		}
	}
	return false
}

func (g *Gateway) reject(reason string, e *apierr.Error) *apierr.Error {
	g.metrics.rejections.WithLabelValues(reason).Inc()
	return e
}

// streams reports whether x asks for a stream: "stream": true, or an
// endpoint that streams unless told otherwise (Ollama's chat and generate
// without "stream", TGI's /generate_stream).
func (x *exchange) streams() bool {
	switch {
	case x.info.Stream:
		return true
	case x.path == "/generate_stream":
		return true
	case !x.info.StreamSet:
		return x.path == "/api/chat" || x.path == "/api/generate"
	}
	return false
}

func isOpenAIStreamPath(p string) bool {
	return p == "/v1/chat/completions" || p == "/v1/completions"
}

// bearer returns the API key the request presents.
func bearer(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			return strings.TrimSpace(h[7:])
		}
	}
	return strings.TrimSpace(r.Header.Get("X-Api-Key"))
}

var errTooLarge = errors.New("body too large")

// readBody reads a body of at most limit bytes. When the client declared
// its length (size >= 0, at most limit) the body is read into one buffer of
// exactly that size.
func readBody(rc io.Reader, size, limit int64) ([]byte, error) {
	if size >= 0 && size <= limit {
		b, err := readDeclared(rc, size)
		if err != nil {
			return nil, err
		}
		var one [1]byte
		if n, err := io.ReadFull(rc, one[:]); n == 0 {
			if err == io.EOF {
				return b, nil
			}
			return nil, err
		}
		// Longer than declared: read on, within the limit.
		rc = io.MultiReader(bytes.NewReader(append(b, one[0])), rc)
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, errTooLarge
	}
	return buf.Bytes(), nil
}

// pacedBody is a request body each read of which must make progress
// within timeout (server.body_timeout): the connection's read deadline is
// moved before every read, so a body may take as long as it likes while it
// keeps coming, and one that stops is refused. done takes the deadline off
// again: the connection goes on to serve the reply (a stream may run for
// minutes) and the next request. After a body that stopped, it stays: the
// server would otherwise wait for the rest of the body before it sends the
// 408, and it closes the connection instead.
type pacedBody struct {
	r       io.Reader
	rc      *http.ResponseController // nil: no deadline
	timeout time.Duration
	set     bool
}

func (p *pacedBody) Read(b []byte) (int, error) {
	if p.rc != nil && p.rc.SetReadDeadline(time.Now().Add(p.timeout)) == nil {
		p.set = true
	}
	return p.r.Read(b)
}

func (p *pacedBody) done(err error) {
	if p.set && !errors.Is(err, os.ErrDeadlineExceeded) {
		_ = p.rc.SetReadDeadline(time.Time{})
	}
}

// bodyUpfront is how much of a declared body readDeclared allocates before
// any of it has come.
const bodyUpfront = 64 << 10

// readDeclared reads a body of the declared size. Its buffer grows with the
// bytes that come (doubling, to exactly size), so that a client declaring a
// large body and sending it slowly, or not at all, holds no more memory
// than twice what it sent.
func readDeclared(rc io.Reader, size int64) ([]byte, error) {
	b := make([]byte, 0, min(size, bodyUpfront))
	for int64(len(b)) < size {
		if len(b) == cap(b) {
			nb := make([]byte, len(b), min(2*int64(cap(b)), size))
			copy(nb, b)
			b = nb
		}
		n, err := rc.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF && int64(len(b)) < size {
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
	}
	return b, nil
}

// fail answers x with e before anything was sent, and records the request.
func (g *Gateway) fail(w http.ResponseWriter, x *exchange, e *apierr.Error) {
	apierr.WriteShaped(w, e, x.errorShape())
	x.status = e.Status
	x.errMsg = e.Code
	g.finish(context.Background(), x)
	g.observe(x)
}

// refusedBodyLinger bounds the read of the rest of a body whose request was
// refused before the body was read (see serveProxy).
const refusedBodyLinger = 2 * time.Second

// forward sends x to a backend, with retries and fallback before the first
// byte, and relays the response.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, x *exchange) {
	ctx := r.Context()
	var tried []*balancer.Upstream
	isTried := func(u *balancer.Upstream) bool {
		for _, t := range tried {
			if t == u {
				return true
			}
		}
		return false
	}
	rt := x.rt
	var fallbacks []*balancer.Upstream
	if x.route != "" {
		if u := rt.pool.ByName(x.route); u != nil {
			fallbacks = []*balancer.Upstream{u}
			if !u.Serves(x.info.Model) {
				g.log.Warn("on_route named a backend that does not serve the request's model; routed by the strategy",
					"request_id", x.requestID, "backend", x.route, "model", x.info.Model)
			}
		} else {
			// A name the script made up may quote the key it saw.
			g.log.Warn("on_route named an unknown backend", "request_id", x.requestID, "backend", x.withoutKeys(x.route))
		}
	}
	// failed are the upstreams that failed a try of this request.
	var failed []*balancer.Upstream
	var lastErr *apierr.Error
	// retries counts the tries routing.retry made: a fallback's try is
	// no retry, and uses none of max_retries.
	retries := 0
	for attempt := 0; ; attempt++ {
		up := nextFallback(fallbacks, isTried, x.info.Model, rt.pool.Now())
		if up == nil {
			var err error
			up, err = rt.pool.Pick(x.info.Model, isTried)
			if errors.Is(err, balancer.ErrNoAvailable) && len(tried) > 0 {
				// Every backend was tried once: retry on any that is
				// still available rather than give up.
				up, err = rt.pool.Pick(x.info.Model, func(*balancer.Upstream) bool { return false })
			}
			if err != nil {
				if lastErr != nil {
					g.failForward(w, x, lastErr)
					return
				}
				if errors.Is(err, balancer.ErrModelNotFound) {
					g.failForward(w, x, apierr.NotFound("model_not_found", "no backend serves model "+strconv.Quote(x.info.Model)))
				} else {
					g.failForward(w, x, apierr.Unavailable("no_backend_available", "no backend is available; try again shortly"))
				}
				return
			}
		}
		if attempt == 0 {
			// The first try's chain, whether on_route or the strategy
			// chose its backend.
			fallbacks = rt.pool.FallbackFor(x.info.Model, up)
		}
		tried = append(tried, up)
		x.upstream = up
		tctx, cancel := ctx, context.CancelFunc(func() {})
		if d := rt.timeouts[up]; d > 0 {
			tctx, cancel = context.WithTimeout(ctx, d)
		}
		resp, err := g.roundTrip(tctx, r, x, up)
		if err == nil {
			if resp.StatusCode >= 500 {
				failed = reportFailure(failed, up, g.now())
			} else {
				up.ReportSuccess()
			}
			fallback := resp.StatusCode >= 500 && nextFallback(fallbacks, isTried, x.info.Model, rt.pool.Now()) != nil
			if fallback || rt.retry.ShouldRetry(retries, resp.StatusCode, nil) {
				drain(resp.Body)
				cancel()
				up.Release()
				lastErr = apierr.BadGateway(rt.backendLabel(up) + " answered " + strconv.Itoa(resp.StatusCode))
				if !fallback {
					if !g.sleep(ctx, rt.retry.Backoff(retries)) {
						g.abandoned(ctx, w, x)
						return
					}
					retries++
				}
				// On the last attempt ShouldRetry is false and the
				// backend's answer is relayed as it is.
				continue
			}
			// An error here is the read timeout's before the body's
			// first byte: nothing went to the client, and the try failed
			// as one whose head never came.
			if err = g.relayTry(ctx, r, w, x, resp, cancel, up); err == nil {
				return
			}
		}
		cancel()
		if ctx.Err() != nil {
			// The client left, or the server is cutting the request:
			// not the backend's failure.
			g.abandoned(ctx, w, x)
			return
		}
		failed = reportFailure(failed, up, g.now())
		lastErr = classify(err)
		// What the client is told does not say what failed (a refused
		// connection, a TLS certificate not trusted): the log does.
		g.logFailure(slog.LevelWarn, "backend request failed", "request_id", x.requestID, "backend", up.Name, "err", transportError(err))
		// A configured fallback is tried at once, with retries on or
		// off; a retry of the pool waits its backoff first.
		fallback := nextFallback(fallbacks, isTried, x.info.Model, rt.pool.Now()) != nil
		if fallback {
			continue
		}
		if rt.retry.ShouldRetry(retries, 0, err) {
			if !g.sleep(ctx, rt.retry.Backoff(retries)) {
				g.abandoned(ctx, w, x)
				return
			}
			retries++
			continue
		}
		g.failForward(w, x, lastErr)
		return
	}
}

// relayTry relays resp, the answer of a try at up, and ends the try. It
// returns the error that failed the try before anything went to the
// client (the read timeout), nil once the answer was relayed.
func (g *Gateway) relayTry(ctx context.Context, r *http.Request, w http.ResponseWriter, x *exchange, resp *http.Response, cancel context.CancelFunc, up *balancer.Upstream) error {
	// Deferred: a relay that panics (a writer raising
	// http.ErrAbortHandler) must still end its try, or the upstream would
	// count a request in flight for as long as the process lives, and
	// least_connections and least_load would shun it.
	defer cancel()
	defer up.Release()
	if e := backendErrorReply(resp, x.rt.backendLabel(up)); e != nil {
		drain(resp.Body)
		g.failForward(w, x, e)
		return nil
	}
	rt := x.rt
	format := replyFormat(x, resp)
	if lua := rt.lua; lua != nil && lua.Has(hooks.HookResponse) && !format.Streaming() {
		return g.relayWithHook(r, w, x, resp, format)
	}
	return g.relay(ctx, w, x, resp, format)
}

// showName returns the "name" of an /api/show body (a JSON object), read
// under every spelling an engine may match (Go's JSON takes any case and
// keeps the last, others match exactly): false when two of them differ,
// as the request's "model" is refused then (400 ambiguous_field), or a
// 400 invalid_type when one is not a string.
func showName(body []byte) (string, *apierr.Error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", nil
	}
	var name string
	seen := false
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return name, nil
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return name, nil
		}
		if k, _ := t.(string); strings.EqualFold(k, "name") {
			var s string
			var te *json.UnmarshalTypeError
			if err := json.Unmarshal(v, &s); errors.As(err, &te) {
				te.Field = k
				return "", typeMismatch(te, "")
			}
			if seen && s != name {
				return "", apierr.BadRequest("ambiguous_field", (&usage.AmbiguousFieldError{Field: "name"}).Error())
			}
			name, seen = s, true
		}
	}
	return name, nil
}

// replyFormat is resp's wire format: by its content type, or, without a
// known one, by its first bytes ("d" could open "data:": it reads on until
// they tell), which it reads ahead (resp.Body then gives them again). It
// decides both whether an on_response script sees the reply (not a stream)
// and how relay cuts and reads it.
func replyFormat(x *exchange, resp *http.Response) usage.Format {
	ctype := resp.Header.Get("Content-Type")
	var first []byte
	if usage.SniffNeedsMore(x.path, ctype, nil) {
		br := bufio.NewReaderSize(resp.Body, 512)
		resp.Body = struct {
			io.Reader
			io.Closer
		}{br, resp.Body}
		for n := 1; n <= br.Size(); n = len(first) + 1 {
			var err error
			if first, err = br.Peek(n); err != nil || !usage.SniffNeedsMore(x.path, ctype, first) {
				break
			}
		}
	}
	return usage.SniffFormat(x.path, ctype, first)
}

// reportFailure counts a failed try against up unless up already failed
// in this request, and returns failed with up in it: one bad request is
// one failure of a backend however many of its retries went there, so that
// retries alone do not eject the only backend.
func reportFailure(failed []*balancer.Upstream, up *balancer.Upstream, now time.Time) []*balancer.Upstream {
	for _, f := range failed {
		if f == up {
			return failed
		}
	}
	up.ReportFailure(now)
	return append(failed, up)
}

// nextFallback returns the first upstream of chain not yet tried that is
// available and serves model.
func nextFallback(chain []*balancer.Upstream, tried func(*balancer.Upstream) bool, model string, now time.Time) *balancer.Upstream {
	for _, u := range chain {
		if !tried(u) && u.Available(now) && u.Serves(model) {
			return u
		}
	}
	return nil
}

// abandoned ends x, whose context ended before any reply went out: its
// client left (499, recorded only), or the server is cutting it at its
// drain deadline, and the client, still connected, gets a 503.
func (g *Gateway) abandoned(ctx context.Context, w http.ResponseWriter, x *exchange) {
	if cutByServer(ctx) {
		g.failForward(w, x, apierr.Unavailable("server_shutdown", "the gateway is shutting down; try again"))
		return
	}
	x.status, x.errMsg = 499, "client_closed_request"
}

// errorShape is the shape of the gateway's own errors for x's client (see
// shapeOf).
func (x *exchange) errorShape() apierr.Shape { return shapeOf(x.path) }

// shapeOf is the shape of the gateway's own errors on path: Anthropic's
// for the Messages API and the paths under it (count_tokens, which the
// gateway does not serve), whose SDKs read its envelope; Ollama's for
// Ollama's API (/api/...), whose clients show its error string; OpenAI's
// for every other path.
func shapeOf(path string) apierr.Shape {
	switch {
	case path == "/v1/messages" || strings.HasPrefix(path, "/v1/messages/"):
		return apierr.Anthropic
	case path == "/api" || strings.HasPrefix(path, "/api/"):
		return apierr.Ollama
	}
	return apierr.OpenAI
}

func (g *Gateway) failForward(w http.ResponseWriter, x *exchange, e *apierr.Error) {
	apierr.WriteShaped(w, e, x.errorShape())
	x.status = e.Status
	x.errMsg = e.Code
}

func (g *Gateway) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func drain(rc io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, rc, 64<<10)
	_ = rc.Close()
}

// roundTrip sends one try to up. On success the upstream stays acquired
// until the caller releases it.
func (g *Gateway) roundTrip(ctx context.Context, r *http.Request, x *exchange, up *balancer.Upstream) (*http.Response, error) {
	target := up.URL.JoinPath(r.URL.Path)
	target.RawQuery = queryWithoutKey(backendQuery(r.URL.RawQuery), x.secret)
	var body io.Reader = http.NoBody
	if x.body != nil {
		body = bytes.NewReader(x.body)
	}
	if !x.streams() {
		// Its answer comes whole: the backend's response timeout applies.
		ctx = balancer.WholeAnswer(ctx)
	}
	out, err := http.NewRequestWithContext(ctx, r.Method, target.String(), body)
	if err != nil {
		return nil, err
	}
	if x.body != nil {
		out.ContentLength = int64(len(x.body))
	}
	copyRequestHeader(out.Header, r.Header, x.secret)
	setForwardedFor(out.Header, x.peer, x.peerTrusted)
	if x.body != nil {
		setJSONContentType(out.Header)
	}
	// on_response scripts read the reply's bytes, and its usage is read
	// off the same bytes: they are asked for uncompressed.
	hooked := x.rt.lua != nil && x.rt.lua.Has(hooks.HookResponse)
	setBackendAcceptEncoding(out.Header, hooked || x.streams())
	out.Header.Set("X-Request-Id", x.traceID())
	up.SetHeaders(out)
	balancer.MarkReplayable(out)
	up.Acquire()
	x.sent = time.Now()
	resp, err := up.Transport.RoundTrip(out)
	if err != nil {
		up.Release()
		return nil, err
	}
	return resp, nil
}

// firstByte records the arrival of the first byte of the reply's body
// with status: the request's time to first token and, for a 2xx reply,
// the upstream's sample for latency_based, timed from when the try was
// sent. The body's first byte, not the head: vLLM and TGI send a stream's
// head at once and its first event only after queueing and prefill. A
// failed reply is no sample, or a backend failing fast would look fast.
func (x *exchange) firstByte(status int) {
	if x.ttft != 0 {
		return
	}
	now := time.Now()
	x.ttft = now.Sub(x.start)
	if status >= 200 && status < 300 && x.upstream != nil {
		x.upstream.ObserveTTFT(now.Sub(x.sent))
	}
}

// errEndedAtHead fails a try whose 2xx reply ends where its connection does
// (no Content-Length, not chunked) and ended before its first byte: the
// backend closed the connection after its head, which a reply with a length
// shows as io.ErrUnexpectedEOF, which it wraps (retried as a connect error).
var errEndedAtHead = fmt.Errorf("the backend closed the connection after its head: %w", io.ErrUnexpectedEOF)

// endsAtClose reports whether resp is an HTTP/1 2xx reply without a
// length: no Content-Length and not chunked, its body ends where the
// connection does. Such a body cannot tell its end from the backend's
// failure, but by what it holds: an empty one, or a stream without its
// format's last event, is the backend's failure. (HTTP/2 ends a body
// explicitly, with or without a length.)
func endsAtClose(resp *http.Response) bool {
	return resp.ProtoMajor == 1 && resp.StatusCode/100 == 2 && resp.ContentLength < 0 && len(resp.TransferEncoding) == 0
}

// finalEventGrace is how long a stream's connection may go on after its
// last event before the relay stops reading it: the client's reply ends
// then, not at the backend's read timeout.
const finalEventGrace = 2 * time.Second

// relay copies the backend's response to the client: streams event by
// event with a flush after each read, other bodies as they come. It
// returns the error of a first read that failed with no byte (the read
// timeout, or the backend closing the connection after its head):
// nothing has gone to the client then, and the try has failed as one
// whose head never came.
func (g *Gateway) relay(ctx context.Context, w http.ResponseWriter, x *exchange, resp *http.Response, format usage.Format) error {
	defer resp.Body.Close()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	// The body's first piece is read before the head goes out (net/http
	// would hold the head until then anyway: a stream is flushed after
	// its first read).
	n, err := resp.Body.Read(buf)
	untilClose := endsAtClose(resp)
	if n == 0 && err == io.EOF && untilClose {
		return errEndedAtHead
	}
	if n == 0 && err != nil && err != io.EOF {
		return err
	}
	ctype := resp.Header.Get("Content-Type")
	streaming := format.Streaming()
	x.streamed = streaming
	copyResponseHeader(w.Header(), resp.Header)
	if streaming {
		w.Header().Del("Content-Length")
	}
	// The status is recorded once its head is written: a panic writing
	// it leaves the client nothing, which end records as a 500.
	w.WriteHeader(resp.StatusCode)
	x.status, x.engineStatus = resp.StatusCode, resp.StatusCode
	maxText := 1 << 20
	if x.captures() {
		maxText = x.rt.maxCapture + captureRedactMargin
	}
	ex := usage.NewExtractor(format, usage.Options{MaxText: maxText})
	ex.ResponseHeader(resp.Header)
	rc := responseController(w)
	pace := newSendPace(rc, x.rt.sendTimeout, x.conn)
	defer pace.done()
	encoding := resp.Header.Get("Content-Encoding")
	compressed := encoding != "" && !strings.EqualFold(encoding, "identity")
	var tee *decodeTee
	if compressed {
		tee = newDecodeTee(encoding, streaming, format, ex)
	}

	if streaming && !compressed {
		sp := usage.NewSplitter(format)
		var writeErr error
		hid := false // the last piece was a hidden usage chunk
		// ended is whether the stream has sent its format's last event:
		// without it the connection's end (of a reply that ends where
		// its connection does) is the backend's failure, not the
		// stream's end; with it, whatever the connection does next
		// (closed without the chunked ending, held open: llama.cpp's
		// server has done both) is no failure of the stream's.
		ended := false
		parse := func(ev []byte) {
			ex.Event(ev)
			if !ended && usage.IsFinalEvent(format, ev) {
				ended = true
				if !x.committed && x.commit != nil {
					x.result, x.delivered = ex.Result(), true
					x.commit()
				}
			}
		}
		// afterEnd closes the body of a stream whose last event came but
		// whose connection does not end within finalEventGrace, ending
		// the relay's read.
		var afterEnd *time.Timer
		defer func() {
			if afterEnd != nil {
				afterEnd.Stop()
			}
		}()
		// An event larger than the splitter holds goes out in pieces as
		// they come, and is read once whole (or, past what it keeps, counted
		// by its length).
		sp.Whole, sp.Lost = parse, ex.Unread
		emit := func(ev []byte) error {
			switch {
			case sp.Raw():
				hid = false
			case x.hideUsage:
				parse(ev)
				if usage.IsUsageOnlyChunk(ev) {
					hid = true
					return nil
				}
				if hid && len(ev) == 1 && ev[0] == '\n' {
					// The LF of the hidden chunk's CRLF, cut off
					// from it by a read: it goes with the chunk.
					return nil
				}
				hid = false
				ev = usage.StripUsage(ev)
			default:
				parse(ev)
			}
			if _, err := w.Write(ev); err != nil {
				writeErr = err
				return err
			}
			return nil
		}
		for ; ; n, err = resp.Body.Read(buf) {
			if n > 0 {
				x.firstByte(resp.StatusCode)
				pace.arm()
				if ferr := sp.Feed(buf[:n], emit); ferr != nil {
					break
				}
				if writeErr == nil {
					if ferr := rc.Flush(); ferr != nil {
						writeErr = ferr
						break
					}
					if g.journal != nil && !x.committed {
						g.checkpoint(x, ex)
					}
				}
				if ended && afterEnd == nil {
					body := resp.Body
					afterEnd = time.AfterFunc(finalEventGrace, func() { _ = body.Close() })
				}
			}
			if err != nil {
				// What ends the stream may follow a long silence (a
				// read_timeout longer than send_timeout): it gets the
				// send_timeout of its own.
				pace.arm()
				if err != io.EOF && writeErr == nil && cutByServer(ctx) {
					// The drain deadline passed: the stream ends as cut
					// by the server, in its client's dialect, before the
					// connection is closed.
					sp.Reset()
					x.errMsg = "server_shutdown"
					if end := streamShutdownEnding(format, ctype, x.path); end != nil {
						_, _ = w.Write(end)
						_ = rc.Flush()
					}
				} else if err != io.EOF && writeErr == nil && ctx.Err() != nil {
					// The client left, or a write to it failed (net/http
					// then cancels the request's context, which the
					// backend read may see before the relay sees the
					// write's error): the connection's writer keeps a
					// failed write's error, which a flush returns.
					if ferr := rc.Flush(); ferr != nil {
						writeErr = ferr
					} else {
						writeErr = ctx.Err()
					}
				} else if writeErr == nil && !ended && (err != io.EOF || untilClose && !usage.IsFinalEvent(format, sp.Held())) {
					// The backend failed mid-stream (or, with a reply
					// that ends at the connection's close, closed it
					// before the last event): end the stream with an
					// error event in the client's dialect rather
					// than silence. An event the backend tore off half
					// way is not relayed: its bytes would run into the
					// error event and hide it.
					sp.Reset()
					x.errMsg = backendReadError(err, "backend_stream_error")
					if end := streamErrorEnding(format, ctype, x.path); end != nil {
						_, _ = w.Write(end)
						_ = rc.Flush()
					}
				} else if writeErr == nil {
					_ = sp.Flush(emit)
					_ = rc.Flush()
				}
				break
			}
		}
		if writeErr != nil {
			x.errMsg = pace.clientWriteError(writeErr)
		}
	} else {
		var capture replyCapture
		// The last piece read is held back until the body has ended, so
		// that the request's event is durable before the client has the
		// whole reply (streams, compressed or not, go straight through).
		hold := !streaming
		var held, spare []byte
		if hold {
			hp, sp := bufPool.Get().(*[]byte), bufPool.Get().(*[]byte)
			defer bufPool.Put(hp)
			defer bufPool.Put(sp)
			held, spare = (*hp)[:0], (*sp)[:0]
		}
		// read and sent count the bytes of the reply read and the bytes
		// the client was sent; clientCut is set when it stopped taking
		// them before the reply's end.
		read, sent, clientCut := 0, 0, false
		for ; ; n, err = resp.Body.Read(buf) {
			read += n
			if n > 0 {
				x.firstByte(resp.StatusCode)
				if tee != nil {
					tee.Write(buf[:n])
				} else if !compressed {
					capture.Write(buf[:n])
				}
				out := buf[:n]
				if hold {
					// Write what was held; hold this piece instead.
					out = held
					held, spare = append(spare[:0], buf[:n]...), held
				}
				if len(out) > 0 {
					pace.arm()
					wn, werr := w.Write(out)
					sent += wn
					if werr == nil && !streaming {
						// Out to the connection now, not held in the
						// server's buffers (up to 6 KB): a reply slow to
						// come reaches the client as it comes, and a
						// client that leaves is billed for what reached
						// its connection, not for what it never had. A
						// piece whose flush failed may have gone in part:
						// it counts, as a stream's last piece does.
						werr = rc.Flush()
					}
					if werr != nil {
						x.errMsg = pace.clientWriteError(werr)
						held, clientCut = nil, true
						break
					}
				}
				if streaming {
					if ferr := rc.Flush(); ferr != nil {
						x.errMsg = pace.clientWriteError(ferr)
						break
					}
				}
			}
			if err != nil {
				if err != io.EOF {
					x.errMsg = backendReadError(err, "backend_error")
					if ctx.Err() != nil {
						// The client left: the request's context
						// cancelled the backend read.
						x.errMsg, clientCut = "client_closed_request", true
					} else {
						x.aborted = true
					}
				}
				break
			}
		}
		// kept is what kept the reply for metering: nil for a
		// compressed one the gateway cannot read.
		var kept *replyCapture
		if tee != nil {
			tee.Close()
			x.replyBody, x.replyCut, kept = tee.body, tee.cut, tee.capture
		} else if !compressed {
			capture.meter(ex)
			x.replyBody, x.replyCut = capture.kept()
			kept = &capture
		}
		// clientGot is how much of the reply the client was sent when it
		// stopped taking it: of a compressed reply, the same share of
		// what was decompressed.
		clientGot := sent
		if tee != nil && kept != nil {
			clientGot = int(int64(kept.size) * int64(sent) / int64(max(read, 1)))
		}
		r, _ := ex.Partial(0)
		switch {
		case kept == nil:
		case x.aborted:
			// The backend broke the reply off: what arrived of its
			// text was delivered, and is billed; past what was kept
			// of it, by its length.
			ex.BodyCut(x.replyBody)
			unreadText(ex, kept.size-len(x.replyBody))
		case clientCut && !r.Found:
			// The client stopped taking the reply before its usage (at
			// its end) was read: the text it was sent is billed,
			// estimated, as for a stream it left; past what was kept
			// of the reply, by its length.
			ex.BodyCut(x.replyBody[:min(clientGot, len(x.replyBody))])
			unreadText(ex, clientGot-len(x.replyBody))
		case !clientCut:
			kept.estimateCut(ex)
		}
		if clientCut && kept != nil && clientGot < len(x.replyBody) {
			// The captured reply is what the client got, marked cut
			// (once redacted: a secret the cut splits is whole then).
			x.replyLeft, x.replyGot = true, clientGot
		}
		if len(held) > 0 {
			x.result, x.delivered = ex.Result(), true
			if x.commit != nil {
				x.commit()
			}
			pace.arm()
			if _, werr := w.Write(held); werr != nil {
				x.errMsg = pace.clientWriteError(werr)
			} else if w.Header().Get("Content-Length") != "" {
				// The reply is whole: send it now rather than when the
				// handler returns, so the metrics and the access line
				// that follow do not delay it. (A chunked reply waits
				// for its terminator, which only the return writes.)
				_ = rc.Flush()
			}
		}
	}
	x.result = ex.Result()
	x.delivered = true
	return nil
}

// backendReadError is the event's error for a reply the backend broke off
// with err: the read timeout's own, else other.
func backendReadError(err error, other string) string {
	if errors.Is(err, balancer.ErrReadTimeout) {
		return "backend_read_timeout"
	}
	return other
}

// The endings of a stream cut mid-way, each in the shape its own clients
// read as an error: OpenAI-style streams get an SSE error event and
// [DONE] (the Responses API's its own error event, without [DONE]),
// Anthropic's its error event, TGI's an event with error and error_type,
// Ollama's an NDJSON line with error. One set for a backend
// that failed, one for a server cutting the stream at its drain deadline.
var (
	backendFailedEndings = streamEndings("the backend failed mid-stream", "api_error", "backend_stream_error")
	shutdownEndings      = streamEndings("the gateway is shutting down; the reply was cut", "api_error", "server_shutdown")
)

// endings are a stream's error endings, by dialect.
type endings struct{ openai, responses, anthropic, tgi, ollama []byte }

func streamEndings(msg, typ, code string) endings {
	m, _ := json.Marshal(msg)
	return endings{
		openai:    []byte(`event: error` + "\n" + `data: {"error":{"message":` + string(m) + `,"type":"` + typ + `","code":"` + code + `"}}` + "\n\n" + `data: [DONE]` + "\n\n"),
		responses: []byte(`event: error` + "\n" + `data: {"type":"error","code":"` + code + `","message":` + string(m) + `,"param":null}` + "\n\n"),
		anthropic: []byte(`event: error` + "\n" + `data: {"type":"error","error":{"type":"` + typ + `","message":` + string(m) + `}}` + "\n\n"),
		tgi:       []byte(`data:{"error":` + string(m) + `,"error_type":"` + code + `"}` + "\n\n"),
		ollama:    []byte(`{"error":` + string(m) + `}` + "\n"),
	}
}

// streamErrorEnding returns what ends a stream of format, on path, whose
// backend failed mid-way.
func streamErrorEnding(format usage.Format, ctype, path string) []byte {
	return backendFailedEndings.of(format, ctype, path)
}

// streamShutdownEnding returns what ends a stream of format, on path, the
// server cuts at its drain deadline.
func streamShutdownEnding(format usage.Format, ctype, path string) []byte {
	return shutdownEndings.of(format, ctype, path)
}

func (e endings) of(format usage.Format, ctype, path string) []byte {
	switch format {
	case usage.FormatAnthropicSSE:
		return e.anthropic
	case usage.FormatTGISSE:
		return e.tgi
	case usage.FormatOllamaNDJSON:
		return e.ollama
	}
	if format == usage.FormatOpenAISSE {
		// NDJSON on an OpenAI path ends as Ollama's lines do.
		if strings.Contains(strings.ToLower(ctype), "ndjson") {
			return e.ollama
		}
		if path == "/v1/responses" {
			return e.responses
		}
		return e.openai
	}
	return nil
}

// transportError is err, a transport's, without the URL net/http's errors
// quote (a backend's URL may hold credentials).
func transportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// classify maps a transport error to the client's error.
func classify(err error) *apierr.Error {
	var us interface{ Unsent() bool }
	if errors.As(err, &us) && us.Unsent() {
		// The transport's write timeout: the backend stopped reading the
		// request.
		return apierr.GatewayTimeout("the backend did not take the request in time")
	}
	if errors.Is(err, balancer.ErrReadTimeout) {
		return apierr.GatewayTimeout("the backend sent its answer's head and then nothing in time")
	}
	var ne interface{ Timeout() bool }
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return apierr.GatewayTimeout("the backend did not answer in time")
	}
	return apierr.BadGateway("the backend could not be reached")
}

// estimateCompletion counts the delivered text's tokens, scaled up when the
// kept text was cut short.
func estimateCompletion(res usage.Result) int64 {
	n := int64(usage.CountTokens(res.Text))
	switch {
	case res.TextTruncated && len(res.Text) > 0:
		n = n * res.TextBytes / int64(len(res.Text))
	case res.TextTruncated:
		// Only bytes no one could read (see Extractor.Unread).
		n = (res.TextBytes + 3) / 4
	}
	return n
}

// event is x's event as far as it is known before its reply ends: ids,
// key, model, client, backend, status and reservation.
func (x *exchange) event() *events.RequestCompleted {
	ev := &events.RequestCompleted{
		Schema:     events.SchemaRequestCompletedV1,
		RequestID:  x.requestID,
		APIKey:     x.masked,
		IsStream:   x.streams() || x.streamed,
		Endpoint:   x.path,
		Timestamp:  x.start.UTC(),
		StatusCode: x.status,
		KeyID:      events.AnonymousKeyID,
		Model:      x.info.Model,
		ClientIP:   x.clientIP.String(),

		ClientRequestID: x.clientRequestID,
	}
	if x.adm != nil {
		ev.Reservation = x.adm.reserved
	}
	if x.upstream != nil {
		ev.BackendURL = x.upstream.URL.String()
	}
	if x.key != nil {
		ev.KeyID, ev.KeyName, ev.UserID, ev.QuotaPeriod = x.key.ID, x.key.Name, x.key.UserID, x.key.Period
	} else if x.rt.authOn || x.unauthenticated {
		// Auth is on (or on_auth refused) and the request had no valid
		// key; "anonymous" is kept for gateways without auth.
		ev.KeyID = UnauthenticatedKeyID
	}
	return ev
}

// finish settles accounting for x: usage, metrics, the event.
func (g *Gateway) finish(ctx context.Context, x *exchange) {
	latency := g.now().Sub(x.start)
	if x.errMsg == "client_closed_request" && g.cutting.Load() {
		// The server closed the connection at the end of its drain.
		x.errMsg = "server_shutdown"
		if x.status == 499 {
			x.status = http.StatusServiceUnavailable
		}
	}
	res := x.result
	x.source = events.UsageSourceBackend
	if x.delivered && res.BackendError && x.errMsg == "" && x.status < 400 && x.streamed {
		// The engine ended its stream with its own error event.
		x.errMsg = "backend_stream_error"
	}
	if x.delivered && res.Found && x.engineStatus >= 400 && x.errMsg == "" {
		// An engine's error reply that reported usage: billed as
		// reported, and its event says it failed all the same.
		x.errMsg = "backend_error"
	}
	if x.delivered && !res.Found && (x.engineStatus >= 400 || res.BackendError && res.TextBytes == 0) {
		// The backend answered with its own error (vLLM's context-length
		// 400, Ollama's unknown-model 404, TGI's 422 or its validation
		// error event in a 200 stream, an overloaded 5xx) before any
		// output: it generated nothing and reported no usage, so nothing
		// is billed, least of all an estimate of the prompt it refused.
		res = usage.Result{Model: res.Model}
		if x.errMsg == "" {
			x.errMsg = "backend_error"
		}
	} else if x.delivered && x.body != nil && x.path != "/api/show" && (!res.Found || !res.PromptKnown || x.errMsg == "client_closed_request" || x.errMsg == "client_send_timeout" || x.errMsg == "server_shutdown") {
		// No usage from the backend, or the client left: count what was
		// delivered ourselves. (A GET, Ollama's model list, and
		// /api/show, a model's details, have no prompt and generate
		// nothing: there is nothing to count.)
		x.source = events.UsageSourceEstimated
		if res.CountRejected && x.upstream != nil {
			// A misbehaving engine does this on every reply: the
			// line is rate-limited like a dependency's failure.
			g.logFailure(slog.LevelWarn, "backend reported a token count beyond the maximum; usage estimated",
				"request_id", x.requestID, "backend", x.upstream.Name, "max", events.MaxTokenCount)
		}
		if !res.PromptKnown {
			res.PromptTokens = min(usage.EstimatePrompt(x.info, x.rt.cfg.Auth.Defaults.ImageTokens), events.MaxTokenCount)
		}
		if !res.Found {
			res.CompletionTokens = min(estimateCompletion(res), events.MaxTokenCount)
			if b := x.info.CompletionBound(x.path); b > 0 {
				// No more than the engine could have made.
				res.CompletionTokens = min(res.CompletionTokens, b)
			}
		}
	}
	if !x.delivered {
		res = usage.Result{}
	}
	ev := x.event()
	if x.upstream != nil {
		// Only a request a backend was sent carries its body: a refusal
		// (a bad key, a limit, a model the key may not use) stores no
		// body a client could make the stream keep at will.
		ev.RequestBody = x.requestBody()
	}
	ev.Usage = events.Usage{
		PromptTokens:     res.PromptTokens,
		CompletionTokens: res.CompletionTokens,
		TotalTokens:      res.PromptTokens + res.CompletionTokens,
	}
	ev.LatencyMS = latency.Milliseconds()
	ev.UsageSource = x.source
	ev.TTFTMS = x.ttft.Milliseconds()
	ev.FinishReason = res.FinishReason
	ev.Error = x.errMsg
	g.capture(x, ev, res)
	if res.Model != "" && ev.Model == "" {
		ev.Model = res.Model
	}
	if g.settler != nil && x.adm != nil {
		g.settler.Settle(x.adm.keyID, x.requestID, ev.Usage.TotalTokens, x.start.Add(latency))
	}
	if lua := x.rt.lua; lua != nil && lua.Has(hooks.HookComplete) {
		if err := lua.OnComplete(x.hookContext(context.WithoutCancel(ctx)), ev); err != nil {
			g.countLuaError(hooks.HookComplete, err)
			g.logFailure(slog.LevelWarn, "on_complete failed; the event is published without its request body and captured response", "request_id", x.requestID, "err", x.withoutKeys(err.Error()))
		}
		scrubEventSecret(ev, x.secret)
	}
	if x.refusedUnadmitted() && !g.refusals.allow(ev.KeyID, float64(x.rt.cfg.Logging.RefusalEvents), time.Now()) {
		// A refusal past its key's budget: nothing to bill, no
		// reservation to settle, so nothing but its record is lost. A
		// client hammering a limited key does this as a matter of
		// course: INFO, not a warning.
		g.metrics.unrecorded.Inc()
		g.logFailure(slog.LevelInfo, "refusal events not published: past logging.refusal_events_per_second", "key_id", ev.KeyID)
	} else if d, ok := g.events.(durableSink); ok {
		if !x.committed {
			// Refusals and /v1/models finish after their reply is
			// written: the sender can start at once.
			d.PublishDurable(ev)
		} else if d.AppendDurable(ev) {
			x.wake = d
		}
	} else {
		g.events.Publish(ev)
	}
	if x.journaled {
		// The event is in the outbox: the journal's entry has served.
		g.journal.Close(x.requestID)
	}
	x.billed, x.latency = res, latency
	x.keyID, x.model = ev.KeyID, ev.Model
}

// observe counts x in the metrics and writes its access log line. It runs
// once the client has the whole reply: none of it delays the last bytes.
func (g *Gateway) observe(x *exchange) {
	x.observed = true
	backend := ""
	if x.upstream != nil {
		backend = x.upstream.Name
	}
	res := x.billed
	g.metrics.requests.WithLabelValues(x.path, strconv.FormatBool(x.streams() || x.streamed), backend, strconv.Itoa(x.status)).Inc()
	g.metrics.latency.Observe(float64(x.latency.Microseconds()) / 1000)
	// Only a reply that served the request is a sample: an engine's fast
	// refusal would pull the percentiles down while clients are refused,
	// and so would a model's details (/api/show), which generate nothing.
	if x.ttft > 0 && x.status >= 200 && x.status < 300 && x.path != "/api/show" {
		g.metrics.ttft.Observe(float64(x.ttft.Microseconds()) / 1000)
	}
	if res.PromptTokens > 0 {
		g.metrics.prompt.Add(float64(res.PromptTokens))
	}
	if res.CompletionTokens > 0 {
		g.metrics.completion.Add(float64(res.CompletionTokens))
	}
	if !g.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	g.log.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("request_id", x.requestID), slog.String("key_id", x.keyID),
		slog.String("model", x.model), slog.String("path", x.path),
		slog.Int("status", x.status), slog.Int64("latency_ms", x.latency.Milliseconds()),
		slog.Int64("ttft_ms", x.ttft.Milliseconds()),
		slog.Int64("prompt_tokens", res.PromptTokens), slog.Int64("completion_tokens", res.CompletionTokens),
		slog.String("usage_source", x.source), slog.String("backend", backend), slog.String("error", x.errMsg))
}
