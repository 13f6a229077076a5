package gateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestProfileHandlerNeedsTheAdminToken: the runtime profiles are served to
// holders of the admin token and to nobody else.
func TestProfileHandlerNeedsTheAdminToken(t *testing.T) {
	srv := httptest.NewServer(ProfileHandler("admin-secret"))
	defer srv.Close()
	get := func(path, token string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/debug/pprof/heap?debug=1", "admin-secret"); code != 200 || !strings.Contains(body, "# HeapInuse") {
		t.Fatalf("heap profile with the token: %d %.200s", code, body)
	}
	if code, body := get("/debug/pprof/goroutine?debug=1", "admin-secret"); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("goroutine profile with the token: %d %.200s", code, body)
	}
	for _, tok := range []string{"", "wrong"} {
		if code, body := get("/debug/pprof/heap?debug=1", tok); code != 401 || strings.Contains(body, "HeapInuse") {
			t.Fatalf("heap profile with token %q: %d %.200s", tok, code, body)
		}
	}
	// No token configured: no profiles at all.
	off := httptest.NewServer(ProfileHandler(""))
	defer off.Close()
	resp, err := http.Get(off.URL + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("no admin token configured: %d", resp.StatusCode)
	}
}
