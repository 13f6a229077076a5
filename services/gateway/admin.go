package gateway

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
)

// AdminOptions wires the admin API.
type AdminOptions struct {
	// Token is compared in constant time with the request's bearer token;
	// empty disables the /admin endpoints.
	Token  string
	Ledger ledger.Store
	// Periods returns the keys' quota periods in force (nil: monthly for
	// every key, and no key is unknown).
	Periods func() *ledger.KeyPeriods
	Now     func() time.Time
	// NotServed, when set, says why this process serves neither the
	// usage API (it has no ledger) nor the key API, and where to ask
	// instead: the admin listener of a notifier or a recorder.
	NotServed string
}

// AdminHandler serves the admin API (GET /admin/usage) on its own listener.
func AdminHandler(o AdminOptions) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/usage", func(w http.ResponseWriter, r *http.Request) {
		if o.Ledger == nil {
			msg := "this process has no ledger"
			if o.NotServed != "" {
				msg = o.NotServed
			}
			apierr.Write(w, apierr.NotFound("no_ledger", msg))
			return
		}
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err == nil {
			err = onlyOnce(q, "key", "period")
		}
		if k := q.Get("key"); err == nil && k != "" && !config.KeyIDPattern.MatchString(k) {
			err = fmt.Errorf("key %q is no key id (%s)", k, config.KeyIDRule)
		}
		if err != nil {
			apierr.Write(w, apierr.BadRequest("invalid_query", "GET /admin/usage takes ?key=ID&period=P, each at most once: "+err.Error()))
			return
		}
		var p ledger.Period
		if s := q.Get("period"); s != "" {
			var err error
			if p, err = ledger.ParsePeriod(s); err != nil {
				apierr.Write(w, apierr.BadRequest("invalid_period", err.Error()))
				return
			}
		}
		now := time.Now
		if o.Now != nil {
			now = o.Now
		}
		var kp *ledger.KeyPeriods
		if o.Periods != nil {
			kp = o.Periods()
		}
		rows, err := ledger.Report(r.Context(), o.Ledger, q.Get("key"), p, kp, now())
		if errors.Is(err, ledger.ErrUnknownKey) {
			apierr.Write(w, apierr.NotFound("key_not_found", err.Error()))
			return
		}
		if err != nil {
			apierr.Write(w, apierr.Unavailable("ledger_unavailable", "the ledger is unavailable: "+err.Error()))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"usage": rows})
	})
	// The key API is mounted beside this handler only with Redis; without
	// it, say so rather than that the path is unknown.
	noKeys := func(w http.ResponseWriter, _ *http.Request) {
		if o.NotServed != "" {
			apierr.Write(w, apierr.NotFound("not_served_here", o.NotServed))
			return
		}
		apierr.Write(w, apierr.NotFound("key_store_not_configured",
			"the key API needs the Redis key store: set redis.url and auth.storage: redis"))
	}
	mux.HandleFunc("/admin/keys", noKeys)
	mux.HandleFunc("/admin/keys/", noKeys)
	return adminOnly(o.Token, routeErrors(mux))
}

// onlyOnce reports a parameter of q other than names, or one of them given
// more than once (which one counts would be a guess).
func onlyOnce(q url.Values, names ...string) error {
	for k, v := range q {
		if !slices.Contains(names, k) {
			return fmt.Errorf("unknown parameter %q", k)
		}
		if len(v) > 1 {
			return fmt.Errorf("%q given %d times", k, len(v))
		}
	}
	return nil
}

// AdminRoutes serves the admin listener's mux, answering what it has no
// route for, or would redirect (a path not in canonical form, a subtree
// without its slash), in the admin API's JSON error shape, where ServeMux
// answers plain text or an HTML redirect.
func AdminRoutes(mux *http.ServeMux) http.Handler { return canonicalPaths(routeErrors(mux)) }

// canonicalPaths answers a request for a path not in its canonical form
// (/admin//keys, /admin/../admin/keys) with 404 in the admin API's error
// shape, where ServeMux would answer with an HTML redirect.
func canonicalPaths(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p, c := r.URL.Path, path.Clean(r.URL.Path); p != c && p != c+"/" {
			apierr.Write(w, apierr.NotFound("unknown_url", "unknown admin path "+quotedPath(r)+": ask "+quoted(r, c)))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// routeErrors serves mux, answering what none of its patterns matches in
// the API's JSON error shape, as every other admin error is, instead of
// ServeMux's plain text: 405 with the Allow header for a method the path
// does not take, 404 for a path it does not have.
func routeErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			// A path a subtree's pattern takes with a slash added
			// (/admin for /admin/) would be ServeMux's HTML redirect.
			if _, pp, ok := strings.Cut(pattern, " "); (ok && pp == r.URL.Path+"/") || (!ok && pattern == r.URL.Path+"/") {
				apierr.Write(w, apierr.NotFound("unknown_url", "unknown admin path "+quotedPath(r)+": ask "+quoted(r, r.URL.Path)+"/"))
				return
			}
			mux.ServeHTTP(w, r)
			return
		}
		// h is ServeMux's own 404 or 405 answer; run it only to learn
		// which, and the methods it allows.
		probe := &routeProbe{header: http.Header{}, status: http.StatusOK}
		h.ServeHTTP(probe, r)
		if probe.status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", probe.header.Get("Allow"))
			apierr.Write(w, &apierr.Error{Status: http.StatusMethodNotAllowed, Type: "invalid_request_error", Code: "method_not_allowed",
				Message: "method " + unroutedMethod(r) + " is not allowed on " + quotedPath(r) + " (allowed: " + probe.header.Get("Allow") + ")"})
			return
		}
		apierr.Write(w, apierr.NotFound("unknown_url", "unknown admin path "+quotedPath(r)))
	})
}

// quotedPath is r's path as an admin error quotes it: bounded, and without
// the token or a key.
func quotedPath(r *http.Request) string {
	return clip(pathWithoutSecrets(r), maxLoggedPath)
}

// quoted is s, a path r led to, as an admin error quotes it (see
// quotedPath).
func quoted(r *http.Request, s string) string {
	return clip(withoutSecrets(s, bearer(r)), maxLoggedPath)
}

// routeProbe records the status and headers of a ServeMux error answer and
// drops its body.
type routeProbe struct {
	header http.Header
	status int
}

func (p *routeProbe) Header() http.Header         { return p.header }
func (p *routeProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *routeProbe) WriteHeader(status int)      { p.status = status }

// ProfileHandler serves Go's runtime profiles (net/http/pprof: CPU, heap,
// goroutines, allocations, execution trace) under /debug/pprof/ to holders
// of the admin token, for looking into a live process; `go tool pprof`
// reads them with `-http` or after a download with the token.
func ProfileHandler(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return adminOnly(token, mux)
}

// adminOnly serves h to requests bearing the admin token and answers the
// rest 401; with no token configured it answers every request 401.
func adminOnly(token string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token == "" {
			// A listener from --admin-listen with no admin.token in the
			// file: no token would do, so asking for one misleads.
			apierr.Write(w, apierr.Unauthorized("the admin API is off: this process has no admin.token"))
			return
		}
		if !adminAuthorized(token, r) {
			apierr.Write(w, apierr.Unauthorized("admin token required: send 'Authorization: Bearer <admin.token>'"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

func adminAuthorized(token string, r *http.Request) bool {
	if token == "" {
		return false
	}
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(h[7:])), []byte(token)) == 1
}
