package gateway

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

func TestReservation(t *testing.T) {
	prompt := usage.RequestInfo{Prompt: "0123456789", Messages: 1} // 5 + 3 + 3
	cases := []struct {
		name string
		path string
		info usage.RequestInfo
		cap  int64
		want int64
	}{
		{"max_tokens", "/v1/chat/completions", withMax(prompt, 100), 0, 111},
		{"configured cap", "/v1/chat/completions", prompt, 50, 61},
		{"default cap", "/v1/chat/completions", prompt, 0, 11 + defaultMaxTokensCap},
		{"embeddings", "/v1/embeddings", withMax(prompt, 100), 0, 11},
		{"max_tokens at the bound", "/v1/chat/completions", withMax(prompt, maxReservation-11), 0, maxReservation},
		{"max_tokens past the bound", "/v1/chat/completions", withMax(prompt, maxReservation), 0, maxReservation},
		{"max_tokens near int64 max", "/v1/chat/completions", withMax(prompt, math.MaxInt64-5), 0, maxReservation},
		{"max_tokens int64 max", "/v1/chat/completions", withMax(prompt, math.MaxInt64), 0, maxReservation},
		{"cap int64 max", "/v1/chat/completions", prompt, math.MaxInt64, maxReservation},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := reservation(c.path, c.info, c.cap); got != c.want {
				t.Fatalf("reservation = %d, want %d", got, c.want)
			}
		})
	}
}

func withMax(info usage.RequestInfo, n int64) usage.RequestInfo {
	info.MaxTokens = n
	return info
}

// TestHugeMaxTokensIsReserved: a max_tokens near the int64 maximum reserves
// the bound (not a wrapped, negative sum that reserves nothing), so the
// event the meter applies carries a reservation it accepts.
func TestHugeMaxTokensIsReserved(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`))
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q, total_quota: 1000000}]\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := newSink()
	g, err := New(Options{Config: cfg, Events: s, Admitter: ledger.NewMemoryAdmitter(nil, nil)})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()
	body := fmt.Sprintf(`{"model":"m","max_tokens":%d,"messages":[{"role":"user","content":"hi"}]}`, int64(math.MaxInt64))
	if resp, b := do(t, "POST", srv.URL+"/v1/chat/completions", body, withKey()); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if ev := s.next(t); ev.Reservation != maxReservation {
		t.Fatalf("event reservation %d, want %d", ev.Reservation, maxReservation)
	}
	// The reservation is outstanding: a second request does not fit the
	// quota until the first is settled.
	resp, b := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m","max_tokens":10}`, withKey())
	if resp.StatusCode != 429 {
		t.Fatalf("second request: %d %s, want 429 while the first's reservation is outstanding", resp.StatusCode, b)
	}
}
