package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
)

// maxKeySpecBytes bounds the body of POST /admin/keys and PATCH
// /admin/keys/{id}.
const maxKeySpecBytes = 64 << 10

// SecretWarning goes with every new secret.
const SecretWarning = "store this key now: it is shown only once and cannot be recovered"

// AdminKeysHandler serves the Redis key store's admin API, for the admin
// listener next to AdminHandler:
//
//	POST   /admin/keys                  create (body: keys.Spec) → 201 {key, record, warning}
//	GET    /admin/keys                  list → {keys: [record…]}
//	GET    /admin/keys/{id}             show → record
//	DELETE /admin/keys/{id}             delete → 204
//	POST   /admin/keys/{id}/disable     → record
//	POST   /admin/keys/{id}/enable      → record
//
// Every request needs 'Authorization: Bearer <token>', compared in constant
// time; an empty token disables the API. Records carry the secret's SHA-256
// and a masked form, never the secret. Gateways see a change within their key
// cache's TTL.
//
// storage returns the auth.storage in force (it may change on reload); nil
// means redis. While it is not redis the process's gateway takes its keys
// from the config file and would accept none made here, so every call is
// refused 404 key_store_not_configured, as when there is no Redis at all.
// log (nil: slog's default) says why a call failed with 503.
func AdminKeysHandler(rdb redis.UniversalClient, prefix string, token string, storage func() string, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	mux := http.NewServeMux()
	// route serves pattern; one that takesQuery reads its own, the others
	// refuse any.
	route := func(pattern string, takesQuery bool, fn func(w http.ResponseWriter, r *http.Request) (int, any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.RawQuery != "" && !takesQuery {
				// A query sent to a route that takes none is a
				// mistake (a filter that would be ignored).
				apierr.Write(w, apierr.BadRequest("invalid_query", "this key API route takes no query parameters"))
				return
			}
			status, body, err := fn(w, r)
			if warning, rest := keys.NotAnnounced(err); warning != "" {
				// Made, but the gateways see it within their key
				// cache's 5 s rather than at once.
				log.Warn("admin key API: "+warning, "method", r.Method, "path", quotedPath(r))
				w.Header().Set("X-LLMProxy-Warning", warning)
				err = rest
			}
			if err != nil {
				e := keysError(err)
				if e.Status == http.StatusServiceUnavailable {
					// The operator's answer says only "try again":
					// the log says why.
					log.Warn("admin key API: the key store failed", "method", r.Method, "path", quotedPath(r), "err", err)
				}
				apierr.Write(w, e)
				return
			}
			if body == nil {
				w.WriteHeader(status)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(body)
		})
	}
	handle := func(pattern string, fn func(w http.ResponseWriter, r *http.Request) (int, any, error)) {
		route(pattern, false, fn)
	}
	handle("POST /admin/keys", func(w http.ResponseWriter, r *http.Request) (int, any, error) {
		_, spec, err := readKeySpec(w, r)
		if err != nil {
			return 0, nil, err
		}
		secret, rec, err := keys.Create(r.Context(), rdb, prefix, spec)
		if err != nil {
			return 0, nil, err
		}
		// The one answer that carries a secret: no cache between here and
		// the operator may keep it.
		w.Header().Set("Cache-Control", "no-store")
		return http.StatusCreated, map[string]any{"key": secret, "record": rec, "warning": SecretWarning}, nil
	})
	route("GET /admin/keys", true, func(_ http.ResponseWriter, r *http.Request) (int, any, error) {
		limit, after, err := listPage(r.URL.RawQuery)
		if err != nil {
			return 0, nil, apierr.BadRequest("invalid_query", "GET /admin/keys takes ?limit=N (1 to 10000) and after=CURSOR (the next of the page before), each at most once: "+err.Error())
		}
		list, err := keys.List(r.Context(), rdb, prefix)
		if err != nil {
			return 0, nil, err
		}
		if after != "" {
			i, _ := slices.BinarySearchFunc(list, after, func(rec keys.Record, c string) int { return strings.Compare(pageCursor(rec), c) })
			if i < len(list) && pageCursor(list[i]) == after {
				i++
			}
			list = list[i:]
		}
		out := map[string]any{"keys": list}
		if limit > 0 && len(list) > limit {
			list = list[:limit]
			out["keys"], out["next"] = list, pageCursor(list[limit-1])
		}
		return http.StatusOK, out, nil
	})
	handle("GET /admin/keys/{id}", func(_ http.ResponseWriter, r *http.Request) (int, any, error) {
		rec, err := keys.Get(r.Context(), rdb, prefix, r.PathValue("id"))
		return http.StatusOK, rec, err
	})
	handle("PATCH /admin/keys/{id}", func(w http.ResponseWriter, r *http.Request) (int, any, error) {
		body, _, err := readKeySpec(w, r)
		if err != nil {
			return 0, nil, err
		}
		rec, err := keys.Update(r.Context(), rdb, prefix, r.PathValue("id"), body)
		return http.StatusOK, rec, err
	})
	handle("DELETE /admin/keys/{id}", func(_ http.ResponseWriter, r *http.Request) (int, any, error) {
		return http.StatusNoContent, nil, keys.Delete(r.Context(), rdb, prefix, r.PathValue("id"))
	})
	for action, status := range map[string]string{"disable": keys.StatusDisabled, "enable": keys.StatusActive} {
		handle("POST /admin/keys/{id}/"+action, func(_ http.ResponseWriter, r *http.Request) (int, any, error) {
			rec, err := keys.SetStatus(r.Context(), rdb, prefix, r.PathValue("id"), status)
			return http.StatusOK, rec, err
		})
	}
	api := routeErrors(mux)
	return adminOnly(token, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if storage != nil {
			if st := storage(); st != "redis" {
				apierr.Write(w, apierr.NotFound("key_store_not_configured",
					"auth.storage is "+st+": the gateway takes its keys from api_keys in its config file and would accept no key made here; "+
						"add keys to the file, or set auth.storage: redis to manage them with this API"))
				return
			}
		}
		api.ServeHTTP(w, r)
	}))
}

// listPage reads GET /admin/keys's query: at most limit keys (0: all)
// after the cursor after ("": from the first).
func listPage(rawQuery string) (limit int, after string, err error) {
	q, err := url.ParseQuery(rawQuery)
	if err == nil {
		err = onlyOnce(q, "limit", "after")
	}
	if err != nil {
		return 0, "", err
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 10000 {
			return 0, "", fmt.Errorf("limit %q", v)
		}
	}
	after = q.Get("after")
	if _, _, ok := strings.Cut(after, "."); after != "" && !ok {
		return 0, "", fmt.Errorf("after %q is no cursor this API gave", after)
	}
	return limit, after, nil
}

// pageCursor is rec's place in the list's order (oldest first, then by
// id), as text that sorts in that order: a page goes on after it however
// the keys before it changed (deleted, made) meanwhile.
func pageCursor(rec keys.Record) string {
	return fmt.Sprintf("%020d.%s", rec.CreatedAt.UnixNano(), rec.ID)
}

// readKeySpec reads a request's JSON key spec (POST /admin/keys) or
// change of one (PATCH /admin/keys/{id}, whose nulls read as unset
// fields), refusing what encoding/json would take in a way its sender did
// not mean: unknown, misspelt or repeated fields, a second object, bad
// UTF-8, a rate that rounds to 0.
func readKeySpec(w http.ResponseWriter, r *http.Request) ([]byte, keys.Spec, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxKeySpecBytes))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, keys.Spec{}, apierr.TooLarge(tooLarge.Limit)
	}
	if err != nil {
		return nil, keys.Spec{}, apierr.BadRequest("invalid_json", "the key spec could not be read: "+err.Error())
	}
	if !utf8.Valid(body) {
		// encoding/json would store U+FFFD for the bad bytes.
		return nil, keys.Spec{}, apierr.BadRequest("invalid_json", "the key spec is not valid UTF-8")
	}
	if string(bytes.TrimSpace(body)) == "null" {
		// encoding/json reads null into a spec as no change at all: an
		// empty key created, a PATCH of nothing.
		return nil, keys.Spec{}, apierr.BadRequest("invalid_json", "the body must be a JSON object (a key spec), not null")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var spec keys.Spec
	err = dec.Decode(&spec)
	if err == nil {
		// One spec, one key: a second object after it is not created.
		if _, next := dec.Token(); !errors.Is(next, io.EOF) {
			err = errors.New("more after the key spec's closing brace")
		}
	}
	if err == nil {
		if f, why := oddField(body, reflect.TypeFor[keys.Spec]()); f != "" {
			return nil, keys.Spec{}, apierr.BadRequest("ambiguous_field", "the key spec gives "+strconv.Quote(f)+" "+why+": send each field once, spelled as documented")
		}
		// A rate too small for a float64 reads as 0, no limit.
		var raw struct {
			Limits *struct {
				RPS json.Number `json:"requests_per_second"`
			} `json:"limits"`
		}
		if json.Unmarshal(body, &raw) == nil && raw.Limits != nil && config.RoundsToZero(raw.Limits.RPS.String()) {
			return nil, keys.Spec{}, apierr.BadRequest("invalid_key_spec", "limits.requests_per_second "+raw.Limits.RPS.String()+" is too small to hold: it would read as 0, which means no limit")
		}
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return nil, keys.Spec{}, typeMismatch(te, "the key spec")
	}
	if errors.As(err, &te) {
		// The whole body is of another type ([1], "x", 3): Go's
		// message would name its own type for the spec.
		return nil, keys.Spec{}, apierr.BadRequest("invalid_json", "the body must be a JSON object (a key spec), not "+jsonValueKind(te.Value))
	}
	if err != nil {
		return nil, keys.Spec{}, apierr.BadRequest("invalid_json", "the body must be a JSON key spec: "+strings.TrimPrefix(err.Error(), "json: "))
	}
	return body, spec, nil
}

// keysError maps a key store error to the client's answer.
func keysError(err error) *apierr.Error {
	var ae *apierr.Error
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, keys.ErrInvalid):
		return apierr.BadRequest("invalid_key_spec", err.Error())
	case errors.Is(err, keys.ErrNotFound):
		return apierr.NotFound("key_not_found", err.Error())
	case errors.Is(err, keys.ErrExists):
		return &apierr.Error{Status: http.StatusConflict, Type: "invalid_request_error", Code: "key_exists", Message: err.Error()}
	case errors.Is(err, keys.ErrBusy):
		return &apierr.Error{Status: http.StatusConflict, Type: "invalid_request_error", Code: "key_busy", Message: err.Error()}
	case errors.Is(err, keys.ErrDeleted):
		return &apierr.Error{Status: http.StatusConflict, Type: "invalid_request_error", Code: "key_id_deleted", Message: err.Error()}
	}
	return apierr.Unavailable("key_store_unavailable", "the key store is unavailable; try again shortly")
}

// oddField returns a field of the JSON document body, read as a value of
// type t, that encoding/json would take although it is not written
// exactly as t names it, or is given twice (where it keeps the last): with
// why, "more than once" or "spelled as no field is". A key spec that gave
// allowed_ips once to a reviewer's eye and again, empty, as Allowed_IPs,
// would otherwise make an unrestricted key. "" when there is none, or
// body is not JSON (which Decode reports).
func oddField(body []byte, t reflect.Type) (field, why string) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var walk func(t reflect.Type, path string) (string, string, bool)
	walk = func(t reflect.Type, path string) (string, string, bool) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		tok, err := dec.Token()
		if err != nil {
			return "", "", false
		}
		switch tok {
		case json.Delim('{'):
			names := map[string]reflect.Type{}
			if t.Kind() == reflect.Struct {
				for _, f := range reflect.VisibleFields(t) {
					if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" && f.IsExported() {
						names[name] = f.Type
					}
				}
			}
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return "", "", false
				}
				k, _ := kt.(string)
				ft, known := names[k]
				switch {
				case t.Kind() == reflect.Map:
					ft, known = t.Elem(), true
				case !known && t.Kind() == reflect.Struct:
					return path + k, "spelled as no field is", true
				}
				if seen[k] {
					return path + k, "more than once", true
				}
				seen[k] = true
				if !known {
					ft = reflect.TypeFor[any]()
				}
				if f, why, ok := walk(ft, path+k+"."); f != "" || !ok {
					return f, why, ok
				}
			}
			_, err := dec.Token()
			return "", "", err == nil
		case json.Delim('['):
			et := reflect.TypeFor[any]()
			if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
				et = t.Elem()
			}
			for dec.More() {
				if f, why, ok := walk(et, path); f != "" || !ok {
					return f, why, ok
				}
			}
			_, err := dec.Token()
			return "", "", err == nil
		}
		return "", "", true
	}
	f, why, _ := walk(t, "")
	return f, why
}

// jsonValueKind names, with its article, the kind of JSON value an
// UnmarshalTypeError's Value gives ("array", "string", "number 3", "bool").
func jsonValueKind(v string) string {
	switch {
	case v == "array":
		return "an array"
	case strings.HasPrefix(v, "number"):
		return "a number"
	case v == "bool":
		return "a boolean"
	case v == "":
		return "another type"
	}
	return "a " + v
}
