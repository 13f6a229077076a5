package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redistest"
)

func TestAdminKeysHandler(t *testing.T) {
	rdb, prefix := redistest.New(t, "admin-keys")
	srv := httptest.NewServer(AdminKeysHandler(rdb, prefix, "admin-secret", nil, nil))
	defer srv.Close()
	var lastHeader http.Header
	do := func(method, path, token, body string, want int) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		lastHeader = resp.Header
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != want {
			t.Fatalf("%s %s = %d %v, want %d", method, path, resp.StatusCode, out, want)
		}
		return out
	}

	do("GET", "/admin/keys", "", "", http.StatusUnauthorized)
	do("GET", "/admin/keys", "wrong", "", http.StatusUnauthorized)
	created := do("POST", "/admin/keys", "admin-secret",
		`{"id":"alice","name":"Alice","user_id":"u1","total_quota":1000,"quota_reset_period":"daily","allowed_ips":["10.0.0.0/8"],"limits":{"max_concurrent":2}}`,
		http.StatusCreated)
	secret, _ := created["key"].(string)
	if cc := lastHeader.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("create answered Cache-Control %q, want no-store: the body holds the secret", cc)
	}
	if !strings.HasPrefix(secret, keys.SecretPrefix) || created["warning"] == nil {
		t.Fatalf("create answered %v; want the secret and a warning", created)
	}
	do("POST", "/admin/keys", "admin-secret", `{"id":"alice"}`, http.StatusConflict)
	do("POST", "/admin/keys", "admin-secret", `{"quota_reset_period":"hourly"}`, http.StatusBadRequest)
	do("POST", "/admin/keys", "admin-secret", `{"bogus":1}`, http.StatusBadRequest)
	// A wrong type is named as the client wrote it, without Go's names.
	e, _ := do("POST", "/admin/keys", "admin-secret", `{"id":5}`, http.StatusBadRequest)["error"].(map[string]any)
	if msg, _ := e["message"].(string); e["code"] != "invalid_type" || msg != "invalid type for 'id' in the key spec: expected a string, but got a number instead" {
		t.Errorf("a number for id: %v", e)
	}
	// A field given twice, or in another spelling, is refused: encoding/json
	// would keep the last (an empty allowed_ips after a reviewed one).
	for _, c := range []struct{ body, field string }{
		{`{"id":"amb1","allowed_ips":["10.0.0.0/8"],"Allowed_IPs":[]}`, `"Allowed_IPs" spelled as no field is`},
		{`{"id":"amb2","total_quota":1000,"total_quota":0}`, `"total_quota" more than once`},
		{`{"ID":"upper"}`, `"ID" spelled as no field is`},
		{`{"id":"amb3","limits":{"max_concurrent":2,"Max_Concurrent":0}}`, `"limits.Max_Concurrent" spelled as no field is`},
	} {
		e, _ := do("POST", "/admin/keys", "admin-secret", c.body, http.StatusBadRequest)["error"].(map[string]any)
		if msg, _ := e["message"].(string); e["code"] != "ambiguous_field" || !strings.Contains(msg, c.field) {
			t.Errorf("%s: %v, want ambiguous_field naming %s", c.body, e, c.field)
		}
	}
	do("POST", "/admin/keys", "admin-secret", "{\"name\":\"a\xffb\"}", http.StatusBadRequest)
	// A rate that would read as 0 (no limit) is refused.
	if e, _ := do("POST", "/admin/keys", "admin-secret", `{"limits":{"requests_per_second":1e-400}}`, http.StatusBadRequest)["error"].(map[string]any); e["code"] != "invalid_key_spec" {
		t.Errorf("rps 1e-400: %v", e)
	}
	// A body of another kind is named as JSON names it, not as Go does.
	for body, kind := range map[string]string{`[1]`: "an array", `"x"`: "a string", `3`: "a number", `true`: "a boolean", ` null `: "null"} {
		e, _ := do("POST", "/admin/keys", "admin-secret", body, http.StatusBadRequest)["error"].(map[string]any)
		if msg, _ := e["message"].(string); e["code"] != "invalid_json" || msg != "the body must be a JSON object (a key spec), not "+kind {
			t.Errorf("body %s: %v", body, e)
		}
	}
	do("POST", "/admin/keys", "admin-secret", `{"id":"bob"} {"id":"carol"}`, http.StatusBadRequest)
	do("POST", "/admin/keys", "admin-secret", `{"id":"bob"}]`, http.StatusBadRequest)
	do("POST", "/admin/keys", "admin-secret", `{"name":"`+strings.Repeat("x", maxKeySpecBytes)+`"}`, http.StatusRequestEntityTooLarge)
	do("GET", "/admin/keys/bob", "admin-secret", "", http.StatusNotFound)

	list := do("GET", "/admin/keys", "admin-secret", "", http.StatusOK)
	if ks, _ := list["keys"].([]any); len(ks) != 1 {
		t.Fatalf("list = %v, want one key", list)
	}
	if b, _ := json.Marshal(list); strings.Contains(string(b), secret[len(keys.SecretPrefix):]) {
		t.Fatal("the list shows the secret")
	}
	if rec := do("GET", "/admin/keys/alice", "admin-secret", "", http.StatusOK); rec["sha256"] != keys.Hash(secret) {
		t.Fatalf("show = %v", rec)
	}
	// A change: a merge patch of the spec, checked as a spec is.
	rec := do("PATCH", "/admin/keys/alice", "admin-secret", `{"total_quota":5000,"allowed_ips":null,"limits":{"max_concurrent":4}}`, http.StatusOK)
	if rec["total_quota"] != 5000.0 || rec["allowed_ips"] != nil || rec["limits"].(map[string]any)["max_concurrent"] != 4.0 || rec["quota_reset_period"] != "daily" {
		t.Fatalf("patch = %v", rec)
	}
	do("PATCH", "/admin/keys/alice", "admin-secret", `{"total_quota":-5}`, http.StatusBadRequest)
	do("PATCH", "/admin/keys/alice", "admin-secret", `{"id":"alice2"}`, http.StatusBadRequest)
	do("PATCH", "/admin/keys/alice", "admin-secret", `{"total_quota":1,"total_quota":2}`, http.StatusBadRequest)
	do("PATCH", "/admin/keys/alice", "admin-secret", `{"sha256":"00"}`, http.StatusBadRequest)
	do("PATCH", "/admin/keys/nobody", "admin-secret", `{"name":"x"}`, http.StatusNotFound)
	if rec := do("GET", "/admin/keys/alice", "admin-secret", "", http.StatusOK); rec["total_quota"] != 5000.0 {
		t.Fatalf("after refused changes: %v", rec)
	}
	if rec := do("POST", "/admin/keys/alice/disable", "admin-secret", "", http.StatusOK); rec["status"] != "disabled" {
		t.Fatalf("disable = %v", rec)
	}
	if rec := do("POST", "/admin/keys/alice/enable", "admin-secret", "", http.StatusOK); rec["status"] != "active" {
		t.Fatalf("enable = %v", rec)
	}
	do("DELETE", "/admin/keys/alice", "admin-secret", "", http.StatusNoContent)
	do("DELETE", "/admin/keys/alice", "admin-secret", "", http.StatusNotFound)
	do("GET", "/admin/keys/alice", "admin-secret", "", http.StatusNotFound)
	// The ledger keeps usage by id: a deleted key's id is not given again.
	if e := do("POST", "/admin/keys", "admin-secret", `{"id":"alice"}`, http.StatusConflict); e["error"].(map[string]any)["code"] != "key_id_deleted" {
		t.Fatalf("create with a deleted key's id = %v, want key_id_deleted", e)
	}

	off := httptest.NewServer(AdminKeysHandler(rdb, prefix, "", nil, nil))
	defer off.Close()
	resp, err := http.Get(off.URL + "/admin/keys")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("with no token configured: %d, want 401", resp.StatusCode)
	}
}

// TestAdminKeysPages: GET /admin/keys?limit=N gives the list oldest first
// a page at a time, each with the cursor of the next; a key deleted or made
// between pages neither repeats nor skips the others.
func TestAdminKeysPages(t *testing.T) {
	rdb, prefix := redistest.New(t, "admin-pages")
	srv := httptest.NewServer(AdminKeysHandler(rdb, prefix, "admin-secret", nil, nil))
	defer srv.Close()
	get := func(query string, want int) (ids []string, next string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+"/admin/keys"+query, nil)
		req.Header.Set("Authorization", "Bearer admin-secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Keys []keys.Record
			Next string
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != want {
			t.Fatalf("GET /admin/keys%s = %d, want %d", query, resp.StatusCode, want)
		}
		for _, k := range out.Keys {
			ids = append(ids, k.ID)
		}
		return ids, out.Next
	}
	ctx := context.Background()
	for _, id := range []string{"k1", "k2", "k3", "k4", "k5"} {
		if _, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	all, next := get("", 200)
	if len(all) != 5 || next != "" {
		t.Fatalf("whole list %v, next %q", all, next)
	}
	page, next := get("?limit=2", 200)
	if !slices.Equal(page, all[:2]) || next == "" {
		t.Fatalf("first page %v (next %q), want %v", page, next, all[:2])
	}
	// The page's last key is deleted: the next page goes on after it.
	if err := keys.Delete(ctx, rdb, prefix, all[1]); err != nil {
		t.Fatal(err)
	}
	page, next = get("?limit=2&after="+url.QueryEscape(next), 200)
	if !slices.Equal(page, all[2:4]) || next == "" {
		t.Fatalf("second page %v (next %q), want %v", page, next, all[2:4])
	}
	page, next = get("?after="+url.QueryEscape(next)+"&limit=2", 200)
	if !slices.Equal(page, all[4:]) || next != "" {
		t.Fatalf("last page %v (next %q), want %v and no next", page, next, all[4:])
	}
	for _, q := range []string{"?limit=0", "?limit=x", "?limit=10001", "?limit=1&limit=2", "?after=nonsense", "?page=2"} {
		get(q, 400)
	}
}

// TestAdminKeysLogsTheStoresFailure: a key API call that fails with 503 for
// want of Redis says why on the process's logger (it was the default one,
// a text line among the process's JSON).
func TestAdminKeysLogsTheStoresFailure(t *testing.T) {
	rdb, _ := deadRedis(t)
	lines := make(chan map[string]string, 10)
	srv := httptest.NewServer(AdminKeysHandler(rdb, "llmproxy-test", "admin-secret", nil, slog.New(recordHandler{out: lines})))
	defer srv.Close()
	resp, body := do(t, "GET", srv.URL+"/admin/keys", "", map[string]string{"Authorization": "Bearer admin-secret"})
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("%d %s, want 503", resp.StatusCode, body)
	}
	select {
	case l := <-lines:
		if l["msg"] != "admin key API: the key store failed" || !strings.Contains(l["err"], "connect") {
			t.Fatalf("log line %v", l)
		}
	default:
		t.Fatal("nothing logged on the handler's logger")
	}
}

// TestAdminKeysSaysAChangeWasNotAnnounced: a change made whose
// announcement Redis refused (an ACL user without the key-change channel)
// succeeds, with a warning in X-LLMProxy-Warning and the log: the gateways
// see it within their key cache's 5 s, not at once.
func TestAdminKeysSaysAChangeWasNotAnnounced(t *testing.T) {
	rdb, prefix := redistest.New(t, "admin-keys-ann")
	if _, _, err := keys.Create(context.Background(), rdb, prefix, keys.Spec{ID: "k"}); err != nil {
		t.Fatal(err)
	}
	opts := *rdb.Options()
	refused := redis.NewClient(&opts)
	defer refused.Close()
	refused.AddHook(refusePublish{})
	lines := make(chan map[string]string, 10)
	srv := httptest.NewServer(AdminKeysHandler(refused, prefix, "admin-secret", nil, slog.New(recordHandler{out: lines})))
	defer srv.Close()
	resp, body := do(t, "POST", srv.URL+"/admin/keys/k/disable", "", map[string]string{"Authorization": "Bearer admin-secret"})
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"disabled"`) {
		t.Fatalf("%d %s, want the key disabled", resp.StatusCode, body)
	}
	if w := resp.Header.Get("X-LLMProxy-Warning"); !strings.Contains(w, "5 s") {
		t.Fatalf("X-LLMProxy-Warning %q", w)
	}
	select {
	case l := <-lines:
		if !strings.Contains(l["msg"], "could not be told at once") {
			t.Fatalf("log line %v", l)
		}
	default:
		t.Fatal("nothing logged")
	}
}

// refusePublish is a go-redis hook that fails PUBLISH, as Redis does for an
// ACL user without the channel.
type refusePublish struct{}

func (refusePublish) DialHook(next redis.DialHook) redis.DialHook { return next }
func (refusePublish) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "publish" {
			cmd.SetErr(errors.New("NOPERM this user has no permissions to access one of the channels used as arguments"))
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}
func (refusePublish) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
