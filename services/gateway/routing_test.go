package gateway

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// countingBackend answers every request with status and body and counts
// the requests.
func countingBackend(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// TestStandbyServesWhileItsPrimaryIsEjected: the README's pattern, a
// primary with weight and a weight 0 standby as its fallback. Once the
// failing primary is ejected every request goes to the standby instead of
// getting 503.
func TestStandbyServesWhileItsPrimaryIsEjected(t *testing.T) {
	primary, primaryHits := countingBackend(t, http.StatusServiceUnavailable, `{"error":"overloaded"}`)
	standby, standbyHits := countingBackend(t, http.StatusOK, `{"from":"standby"}`)
	gw, _ := gatewayFromYAML(t, fmt.Sprintf(`
backends:
  - {url: %q, name: vllm-1, weight: 5}
  - {url: %q, name: vllm-2, weight: 0}
routing:
  retry: {enabled: true, max_retries: 2, initial_wait: 1ms, max_wait: 1ms}
  fallback:
    - {primary: vllm-1, fallback: [vllm-2]}
health_check: {failure_threshold: 3, cooldown: 1m}
api_keys: [{key: %q}]
`, primary.URL, standby.URL, testKey))
	for i := range 8 {
		resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m"}`, withKey())
		if resp.StatusCode != 200 || string(body) != `{"from":"standby"}` {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if standbyHits.Load() != 8 || primaryHits.Load() >= 8 {
		t.Fatalf("primary tried %d times, standby %d", primaryHits.Load(), standbyHits.Load())
	}
}
