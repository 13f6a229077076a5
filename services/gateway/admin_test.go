package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redistest"
)

// TestAdminRouteErrorsAreJSON: a path the admin API does not have, or a
// method its path does not take, is answered in the API's JSON error
// shape (405 with Allow), as every other admin error is, not in
// ServeMux's plain text (nor its HTML redirect for a path not in canonical
// form); and only to holders of the token. A usage query that cannot be
// read, names an unknown parameter or gives one twice is refused rather
// than read as no filter.
func TestAdminRouteErrorsAreJSON(t *testing.T) {
	rdb, prefix := redistest.New(t, "admin-routes")
	const token = "admin-secret"
	usage := httptest.NewServer(canonicalPaths(AdminHandler(AdminOptions{Token: token})))
	defer usage.Close()
	store, err := ledger.OpenLocal(filepath.Join(t.TempDir(), "ledger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	withLedger := httptest.NewServer(AdminHandler(AdminOptions{Token: token, Ledger: store}))
	defer withLedger.Close()
	// A key source that knows key "known" only.
	known := &ledger.KeyPeriods{Of: func(_ context.Context, ids []string) (map[string]ledger.Period, error) {
		if slices.Contains(ids, "known") {
			return map[string]ledger.Period{"known": ledger.Daily}, nil
		}
		return nil, nil
	}}
	withKeys := httptest.NewServer(AdminHandler(AdminOptions{Token: token, Ledger: store, Periods: func() *ledger.KeyPeriods { return known }}))
	defer withKeys.Close()
	keysAPI := httptest.NewServer(AdminKeysHandler(rdb, prefix, token, nil, nil))
	defer keysAPI.Close()
	// Redis there, but the gateway takes its keys from the file.
	fileKeys := httptest.NewServer(AdminKeysHandler(rdb, prefix, token, func() string { return "file" }, nil))
	defer fileKeys.Close()
	// A notifier's or recorder's admin listener: neither API is served
	// there, whatever the config says.
	notifier := httptest.NewServer(AdminHandler(AdminOptions{Token: token, NotServed: "--target notifier serves no admin API"}))
	defer notifier.Close()

	tests := []struct {
		srv          *httptest.Server
		method, path string
		token        string
		status       int
		code, allow  string
	}{
		{usage, "POST", "/admin/usage", token, 405, "method_not_allowed", "GET"},
		{usage, "POST", "/admin/usage", "", 401, "invalid_api_key", ""},
		{usage, "GET", "/admin/nothing", token, 404, "unknown_url", ""},
		{usage, "GET", "/admin/nothing", "", 401, "invalid_api_key", ""},
		{usage, "GET", "/admin/usage", token, 404, "no_ledger", ""},
		{usage, "GET", "/admin//keys", token, 404, "unknown_url", ""},
		{usage, "POST", "/admin/./usage", "", 404, "unknown_url", ""},
		{withLedger, "GET", "/admin/usage?key=%ZZ", token, 400, "invalid_query", ""},
		{withLedger, "GET", "/admin/usage?key=a&key=b", token, 400, "invalid_query", ""},
		{withLedger, "GET", "/admin/usage?keys=a", token, 400, "invalid_query", ""},
		{withLedger, "GET", "/admin/usage?period=hourly", token, 400, "invalid_period", ""},
		{withLedger, "GET", "/admin/usage?key=a%00", token, 400, "invalid_query", ""},
		{withKeys, "GET", "/admin/usage?key=unknown", token, 404, "key_not_found", ""},
		{keysAPI, "GET", "/admin/keys?bogus=1", token, 400, "invalid_query", ""},
		{usage, "GET", "/admin/keys", token, 404, "key_store_not_configured", ""},
		{notifier, "GET", "/admin/usage", token, 404, "no_ledger", ""},
		{notifier, "GET", "/admin/keys", token, 404, "not_served_here", ""},
		{notifier, "POST", "/admin/keys/alice/disable", token, 404, "not_served_here", ""},
		{usage, "POST", "/admin/keys/alice/disable", token, 404, "key_store_not_configured", ""},
		{keysAPI, "PUT", "/admin/keys", token, 405, "method_not_allowed", "POST"},
		{keysAPI, "PUT", "/admin/keys/alice", token, 405, "method_not_allowed", "PATCH"},
		{keysAPI, "GET", "/admin/keys/alice/disable", token, 405, "method_not_allowed", "POST"},
		{keysAPI, "GET", "/admin/keys/", token, 404, "unknown_url", ""},
		{keysAPI, "POST", "/admin/keys/alice/rotate", token, 404, "unknown_url", ""},
		{fileKeys, "POST", "/admin/keys", token, 404, "key_store_not_configured", ""},
		{fileKeys, "GET", "/admin/keys/alice", token, 404, "key_store_not_configured", ""},
		{fileKeys, "POST", "/admin/keys", "", 401, "invalid_api_key", ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, tt.srv.URL+tt.path, nil)
			if tt.token != "" {
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Error struct{ Message, Type, Code string }
			}
			err = json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != tt.status || err != nil || body.Error.Code != tt.code || body.Error.Message == "" ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("= %d %s %+v (%v), want %d with code %s in JSON", resp.StatusCode, resp.Header.Get("Content-Type"), body, err, tt.status, tt.code)
			}
			if !strings.Contains(resp.Header.Get("Allow"), tt.allow) {
				t.Errorf("Allow: %q, want it to name %s", resp.Header.Get("Allow"), tt.allow)
			}
		})
	}
}

// TestAdminWithoutTokenSaysItIsOff: a process with no admin.token (an admin
// listener from --admin-listen alone) refuses every admin request, saying
// that the API is off rather than asking for a token none would match.
func TestAdminWithoutTokenSaysItIsOff(t *testing.T) {
	for name, h := range map[string]http.Handler{"usage": AdminHandler(AdminOptions{}), "profiles": ProfileHandler("")} {
		for _, auth := range []string{"", "Bearer ", "Bearer anything"} {
			req := httptest.NewRequest("GET", "/admin/usage", nil)
			if name == "profiles" {
				req = httptest.NewRequest("GET", "/debug/pprof/", nil)
			}
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), "the admin API is off") {
				t.Errorf("%s with %q = %d %s, want 401 saying the admin API is off", name, auth, rec.Code, rec.Body.String())
			}
		}
	}
}

// TestAdminRoutesAnswerJSON: on the admin listener as serve builds it, a
// path it has no route for (/foo, /metrics/) or would redirect (/admin to
// /admin/, a path not in canonical form) is answered 404 in the admin
// API's JSON shape, not ServeMux's plain text or HTML; its routes serve.
func TestAdminRoutesAnswerJSON(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("# metrics\n")) })
	mux.Handle("/admin/", AdminHandler(AdminOptions{Token: "tok"}))
	srv := httptest.NewServer(AdminRoutes(mux))
	defer srv.Close()
	for _, p := range []string{"/admin", "/foo", "/metrics/", "/readyz/", "//healthz", "/admin//usage"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error struct{ Code string } }
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || err != nil || body.Error.Code != "unknown_url" || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s = %d %s (%v), want a JSON 404 unknown_url", p, resp.StatusCode, resp.Header.Get("Content-Type"), err)
		}
	}
	for _, p := range []string{"/healthz", "/metrics"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s = %d, want 200", p, resp.StatusCode)
		}
	}
	// Every 404 quotes the path bounded and without the token, however it
	// is spelled (not canonical, percent-encoded).
	long := strings.Repeat("x", 5000)
	for _, p := range []string{"/admin//" + long, "/admin/admin-secret-0001/../" + long, "/foo/%61dmin-secret-0001/" + long, "/foo/" + long + "/admin-secret-0001"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+p, nil)
		req.Header.Set("Authorization", "Bearer admin-secret-0001")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || len(b) > 1200 || strings.Contains(string(b), "admin-secret") {
			t.Errorf("GET %.40s…: %d %.300s (%d bytes)", p, resp.StatusCode, b, len(b))
		}
	}
}
