package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redistest"
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
		{"images", "/v1/chat/completions", withImages(withMax(prompt, 100), 3), 0, 111 + 3*config.DefaultImageTokens},
		{"images past the bound", "/v1/chat/completions", withImages(withMax(prompt, 100), math.MaxInt64/2), 0, maxReservation},
		{"max_tokens", "/v1/chat/completions", withMax(prompt, 100), 0, 111},
		{"configured cap", "/v1/chat/completions", prompt, 50, 61},
		{"default cap", "/v1/chat/completions", prompt, 0, 11 + defaultMaxTokensCap},
		{"embeddings", "/v1/embeddings", withMax(prompt, 100), 0, 11},
		{"max_tokens at the bound", "/v1/chat/completions", withMax(prompt, maxReservation-11), 0, maxReservation},
		{"max_tokens past the bound", "/v1/chat/completions", withMax(prompt, maxReservation), 0, maxReservation},
		{"max_tokens near int64 max", "/v1/chat/completions", withMax(prompt, math.MaxInt64-5), 0, maxReservation},
		{"max_tokens int64 max", "/v1/chat/completions", withMax(prompt, math.MaxInt64), 0, maxReservation},
		{"cap int64 max", "/v1/chat/completions", prompt, math.MaxInt64, maxReservation},
		{"n 4", "/v1/chat/completions", withChoices(withMax(prompt, 100), 4), 0, 411},
		{"n near int64 max", "/v1/chat/completions", withChoices(withMax(prompt, 100), math.MaxInt64), 0, maxReservation},
		{"token ids", "/v1/completions", usage.RequestInfo{PromptTokenIDs: 20000, MaxTokens: 16}, 0, 3 + 20000 + 16},
		{"a batch of prompts, n 2", "/v1/completions", usage.RequestInfo{Prompts: 3, Choices: 2, MaxTokens: 16}, 0, 3 + 3*2*16},
		{"a batch past the bound", "/v1/completions", usage.RequestInfo{Prompts: math.MaxInt64, Choices: 2, MaxTokens: 16}, 0, maxReservation},
		{"a prompt list on a chat path", "/v1/chat/completions", usage.RequestInfo{Prompts: 3, MaxTokens: 16}, 0, 3 + 16},
		{"token ids, embeddings", "/v1/embeddings", usage.RequestInfo{PromptTokenIDs: 20000}, 0, 3 + 20000},
		{"token ids past the bound", "/v1/embeddings", usage.RequestInfo{PromptTokenIDs: math.MaxInt64}, 0, maxReservation},
		// Ollama's API caps with num_predict alone: a max_tokens beside
		// it caps nothing there, and neither does one without it.
		{"ollama num_predict", "/api/chat", usage.RequestInfo{Messages: 1, MaxTokens: 1, NumPredict: 500}, 50, 6 + 500},
		{"ollama max_tokens alone", "/api/chat", usage.RequestInfo{Messages: 1, MaxTokens: 1}, 50, 6 + 50},
		{"tgi max_new_tokens", "/generate", usage.RequestInfo{MaxTokens: 1, MaxNewTokens: 500}, 50, 3 + 500},
		// MAX_TOKENS: 1 alone: vLLM sees no cap.
		{"cap in another case", "/v1/chat/completions", usage.RequestInfo{MaxTokens: 1, CapsFolded: true}, 50, 3 + 50},
		{"cap in another case, above the default", "/v1/chat/completions", usage.RequestInfo{MaxTokens: 500, CapsFolded: true}, 50, 3 + 500},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := reservation(c.path, c.info, c.cap, config.DefaultImageTokens); got != c.want {
				t.Fatalf("reservation = %d, want %d", got, c.want)
			}
		})
	}
}

// memoryLedgerGateway serves a gateway of config yaml whose admissions go
// to an in-memory ledger that nothing settles, so every reservation stays
// outstanding; its events go to the returned sink.
func memoryLedgerGateway(t *testing.T, yaml string) (*httptest.Server, *sink) {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return serveOptions(t, Options{Config: cfg, Admitter: ledger.NewMemoryAdmitter(nil, nil)})
}

func withImages(info usage.RequestInfo, n int64) usage.RequestInfo {
	info.Images = n
	return info
}

func withChoices(info usage.RequestInfo, n int64) usage.RequestInfo {
	info.Choices = n
	return info
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
	srv, s := memoryLedgerGateway(t, fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q, total_quota: 1000000}]\n", backend.URL, testKey))
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

// TestImagesAreReserved: each image in a prompt reserves
// auth.defaults.image_tokens, so the event carries it, and while the
// reservation is outstanding a second such request that would take the
// quota past its limit is refused before it reaches the backend; with
// image_tokens: 0 images reserve nothing and the second one fits.
func TestImagesAreReserved(t *testing.T) {
	hits := make(chan struct{}, 10)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits <- struct{}{}
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"a cat"}}],"usage":{"prompt_tokens":900,"completion_tokens":2,"total_tokens":902}}`))
	}))
	defer backend.Close()
	const body = `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":[{"type":"text","text":"what?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR"}},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}`
	for _, c := range []struct {
		name     string
		defaults string
		reserved int64
		second   int
	}{
		{"default allowance", "", 2 + 3 + 3 + 2*config.DefaultImageTokens + 10, 429},
		{"configured allowance", "image_tokens: 1300", 2 + 3 + 3 + 2*1300 + 10, 429},
		{"images reserve nothing", "image_tokens: 0", 2 + 3 + 3 + 10, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, s := memoryLedgerGateway(t, fmt.Sprintf("backends: [{url: %q}]\nauth: {defaults: {%s}}\napi_keys: [{key: %q, total_quota: 5000}]\n", backend.URL, c.defaults, testKey))
			if resp, b := do(t, "POST", srv.URL+"/v1/chat/completions", body, withKey()); resp.StatusCode != 200 {
				t.Fatalf("first request: %d %s", resp.StatusCode, b)
			}
			<-hits
			if ev := s.next(t); ev.Reservation != c.reserved {
				t.Fatalf("event reservation %d, want %d", ev.Reservation, c.reserved)
			}
			resp, b := do(t, "POST", srv.URL+"/v1/chat/completions", body, withKey())
			if resp.StatusCode != c.second {
				t.Fatalf("second request: %d %s, want %d", resp.StatusCode, b, c.second)
			}
			if c.second != 200 && len(hits) != 0 {
				t.Fatal("a refused request reached the backend")
			}
		})
	}
}

// TestQuotaOfThePeriodTheRequestArrivedIn: a request is admitted against
// the quota of the period its event counts it in (the period it arrived
// in, its timestamp), not the one its admission happens to run in: one that
// arrived on a used-up day is refused even when admitted after midnight.
func TestQuotaOfThePeriodTheRequestArrivedIn(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`))
	}))
	defer backend.Close()
	rdb, prefix := redistest.New(t, "arrival-period")
	// The request arrives a day before the ledger's clock says: the
	// admission runs in the next period.
	arrived := time.Now().Add(-24 * time.Hour)
	store := ledger.NewRedis(rdb, prefix)
	if _, err := store.Apply(context.Background(), []ledger.Entry{{RequestID: "used", KeyID: "k1", Time: arrived, PromptTokens: 1000}}); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{id: k1, key: %q, total_quota: 1000, quota_reset_period: daily}]\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv, s := serveOptions(t, Options{Config: cfg, Admitter: ledger.NewRedisAdmitter(rdb, prefix), Now: func() time.Time { return arrived }})
	resp, b := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m","max_tokens":10}`, withKey())
	if resp.StatusCode != 429 || !strings.Contains(string(b), "insufficient_quota") {
		t.Fatalf("%d %s; want 429 insufficient_quota (the day it arrived in is used up)", resp.StatusCode, b)
	}
	if ev := s.next(t); !ev.Timestamp.Equal(arrived.UTC()) {
		t.Fatalf("event timestamp %s, want the arrival %s", ev.Timestamp, arrived.UTC())
	}
}

// TestRefusalsCarryRateLimitHeaders: a 429 of the global rate or of the
// key's concurrency says, in OpenAI's x-ratelimit-* headers, which limit it
// hit, that it has nothing left and when to try again; with either ledger.
func TestRefusalsCarryRateLimitHeaders(t *testing.T) {
	// Each admitter reads the key's quota usage from a ledger the test
	// can fill (the meter's part).
	admitters := map[string]func(t *testing.T) (ledger.Admitter, ledger.Store){
		"memory": func(t *testing.T) (ledger.Admitter, ledger.Store) {
			rdb, prefix := redistest.New(t, "admission")
			store := ledger.NewRedis(rdb, prefix)
			return ledger.NewMemoryAdmitter(store, nil), store
		},
		"redis": func(t *testing.T) (ledger.Admitter, ledger.Store) {
			rdb, prefix := redistest.New(t, "admission")
			return ledger.NewRedisAdmitter(rdb, prefix), ledger.NewRedis(rdb, prefix)
		},
	}
	for name, admitter := range admitters {
		t.Run(name, func(t *testing.T) {
			// The backend holds a request marked hold until it is released.
			arrived, release := make(chan struct{}), make(chan struct{})
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Query().Get("hold") != "" {
					arrived <- struct{}{}
					<-release
				}
				_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}]}`))
			}))
			t.Cleanup(backend.Close)
			// serve serves a gateway with limits whose key k1 has used
			// used tokens of its quota's current period.
			serve := func(limits string, used int64) string {
				cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{id: k1, key: %q}]\n%s", backend.URL, testKey, limits)), "c.yaml")
				if err != nil {
					t.Fatal(err)
				}
				a, store := admitter(t)
				if used > 0 {
					if _, err := store.Apply(context.Background(), []ledger.Entry{{RequestID: "used", KeyID: "k1", Time: time.Now(), PromptTokens: used}}); err != nil {
						t.Fatal(err)
					}
				}
				g, err := New(Options{Config: cfg, Events: newSink(), Admitter: a})
				if err != nil {
					t.Fatal(err)
				}
				g.Start(context.Background())
				srv := httptest.NewServer(g.Handler())
				t.Cleanup(srv.Close)
				return srv.URL
			}
			check := func(t *testing.T, resp *http.Response, limit string) {
				t.Helper()
				h := resp.Header
				if resp.StatusCode != 429 || h.Get("Retry-After") == "" {
					t.Fatalf("%d, Retry-After %q; want a 429 with Retry-After", resp.StatusCode, h.Get("Retry-After"))
				}
				reset, err := time.ParseDuration(h.Get("X-Ratelimit-Reset-Requests"))
				if h.Get("X-Ratelimit-Limit-Requests") != limit || h.Get("X-Ratelimit-Remaining-Requests") != "0" || err != nil || reset <= 0 {
					t.Fatalf("x-ratelimit-*-requests: limit %q remaining %q reset %q; want %s, 0 and a reset",
						h.Get("X-Ratelimit-Limit-Requests"), h.Get("X-Ratelimit-Remaining-Requests"), h.Get("X-Ratelimit-Reset-Requests"), limit)
				}
			}

			t.Run("global rate", func(t *testing.T) {
				url := serve("rate_limit: {global: {requests_per_second: 0.1, burst_size: 2}}\n", 0)
				for i := range 2 {
					if resp, b := do(t, "POST", url+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != 200 {
						t.Fatalf("request %d within the burst: %d %s", i, resp.StatusCode, b)
					}
				}
				resp, _ := do(t, "POST", url+"/v1/chat/completions", `{"model":"m"}`, withKey())
				check(t, resp, "2")
			})
			t.Run("key rate beside an rpm", func(t *testing.T) {
				url := serve("rate_limit: {per_key: {requests_per_second: 0.1, requests_per_minute: 100}}\n", 0)
				if resp, b := do(t, "POST", url+"/v1/chat/completions", `{"model":"m"}`, withKey()); resp.StatusCode != 200 {
					t.Fatalf("first request: %d %s", resp.StatusCode, b)
				}
				resp, _ := do(t, "POST", url+"/v1/chat/completions", `{"model":"m"}`, withKey())
				check(t, resp, "1")
			})
			// checkTokens checks a 429's token figures: the limit that
			// refused it, what it has left, and a reset no sooner than
			// Retry-After.
			checkTokens := func(t *testing.T, resp *http.Response, code, limit, remaining string) {
				t.Helper()
				h := resp.Header
				var e struct{ Error struct{ Code string } }
				body, _ := io.ReadAll(resp.Body)
				_ = json.Unmarshal(body, &e)
				retry, rerr := strconv.Atoi(h.Get("Retry-After"))
				reset, err := time.ParseDuration(h.Get("X-Ratelimit-Reset-Tokens"))
				if resp.StatusCode != 429 || e.Error.Code != code || rerr != nil || retry <= 0 {
					t.Fatalf("%d %s, Retry-After %q; want a 429 %s with Retry-After", resp.StatusCode, body, h.Get("Retry-After"), code)
				}
				if h.Get("X-Ratelimit-Limit-Tokens") != limit || h.Get("X-Ratelimit-Remaining-Tokens") != remaining || err != nil || reset <= 0 || reset < time.Duration(retry-1)*time.Second {
					t.Fatalf("x-ratelimit-*-tokens: limit %q remaining %q reset %q (Retry-After %d); want %s, %s and a reset no sooner than Retry-After",
						h.Get("X-Ratelimit-Limit-Tokens"), h.Get("X-Ratelimit-Remaining-Tokens"), h.Get("X-Ratelimit-Reset-Tokens"), retry, limit, remaining)
				}
			}
			big := `{"model":"m","max_tokens":3000}`
			// postBig sends big and returns the response with its body
			// unread (checkTokens reads it).
			postBig := func(t *testing.T, url string) *http.Response {
				t.Helper()
				req, _ := http.NewRequest("POST", url+"/v1/chat/completions", strings.NewReader(big))
				req.Header.Set("Authorization", "Bearer "+testKey)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { resp.Body.Close() })
				return resp
			}
			t.Run("quota beside a tpm", func(t *testing.T) {
				url := serve("auth: {defaults: {total_quota: 5000, quota_reset_period: daily}}\nrate_limit: {per_key: {tokens_per_minute: 100000}}\n", 3000)
				resp := postBig(t, url)
				checkTokens(t, resp, "insufficient_quota", "5000", "0")
				// Beside the limit headers, the SDKs are told not to
				// sleep until the reset.
				if resp.Header.Get("X-Should-Retry") != "false" || resp.Header.Get("Retry-After") == "" {
					t.Errorf("X-Should-Retry %q, Retry-After %q", resp.Header.Get("X-Should-Retry"), resp.Header.Get("Retry-After"))
				}
			})
			t.Run("quota that never resets", func(t *testing.T) {
				url := serve("auth: {defaults: {total_quota: 5000, quota_reset_period: never}}\n", 3000)
				resp, b := do(t, "POST", url+"/v1/chat/completions", big, withKey())
				h := resp.Header
				// No reset is coming: neither Retry-After nor a reset of
				// the tokens is claimed.
				if resp.StatusCode != 429 || h.Get("Retry-After") != "" || h.Get("X-Ratelimit-Limit-Tokens") != "5000" ||
					h.Get("X-Ratelimit-Remaining-Tokens") == "" || len(h.Values("X-Ratelimit-Reset-Tokens")) != 0 {
					t.Fatalf("%d %s; Retry-After %q, x-ratelimit-*-tokens %q %q %q", resp.StatusCode, b, h.Get("Retry-After"),
						h.Get("X-Ratelimit-Limit-Tokens"), h.Get("X-Ratelimit-Remaining-Tokens"), h.Values("X-Ratelimit-Reset-Tokens"))
				}
			})
			// A quota with room for the request once the key's request
			// in flight is settled is not used up: the client is told to
			// retry shortly, not at the period's end.
			t.Run("quota held by a request in flight", func(t *testing.T) {
				url := serve("auth: {defaults: {total_quota: 5000, quota_reset_period: never}}\n", 0)
				go func() {
					req, _ := http.NewRequest("POST", url+"/v1/chat/completions?hold=1", strings.NewReader(big))
					req.Header.Set("Authorization", "Bearer "+testKey)
					if resp, err := http.DefaultClient.Do(req); err == nil {
						resp.Body.Close()
					}
				}()
				<-arrived // the first request holds 3000 of the 5000 tokens
				defer func() { release <- struct{}{} }()
				resp := postBig(t, url)
				if retry := resp.Header.Get("Retry-After"); retry != "1" {
					t.Fatalf("Retry-After %q, want 1", retry)
				}
				checkTokens(t, resp, "rate_limit_exceeded", "5000", "1997")
			})
			t.Run("tpm held by a reservation", func(t *testing.T) {
				url := serve("rate_limit: {per_key: {tokens_per_minute: 5000}}\n", 0)
				if resp, b := do(t, "POST", url+"/v1/chat/completions", big, withKey()); resp.StatusCode != 200 {
					t.Fatalf("first request: %d %s", resp.StatusCode, b)
				}
				resp := postBig(t, url)
				checkTokens(t, resp, "rate_limit_exceeded", "5000", "1997")
			})
			t.Run("concurrency", func(t *testing.T) {
				url := serve("rate_limit: {per_key: {max_concurrent: 1}}\n", 0)
				go func() {
					req, _ := http.NewRequest("POST", url+"/v1/chat/completions?hold=1", strings.NewReader(`{"model":"m"}`))
					req.Header.Set("Authorization", "Bearer "+testKey)
					if resp, err := http.DefaultClient.Do(req); err == nil {
						resp.Body.Close()
					}
				}()
				<-arrived // the first request holds the key's one slot
				defer func() { release <- struct{}{} }()
				resp, _ := do(t, "POST", url+"/v1/chat/completions", `{"model":"m"}`, withKey())
				check(t, resp, "1")
			})
		})
	}
}

// TestResetString: the x-ratelimit-reset-* durations are OpenAI's
// format, rounded up to the millisecond: never before the limit has room.
func TestResetString(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{-time.Second, "0s"},
		{time.Nanosecond, "1ms"},
		{20 * time.Millisecond, "20ms"},
		{999*time.Millisecond + 1, "1s"},
		{time.Second, "1s"},
		{59*time.Second + 300*time.Millisecond + 1, "59.301s"},
		{6 * time.Minute, "6m0s"},
	} {
		got := resetString(c.d)
		if got != c.want {
			t.Errorf("resetString(%v) = %q, want %q", c.d, got, c.want)
		}
		if d, err := time.ParseDuration(got); err != nil || d < c.d {
			t.Errorf("resetString(%v) = %q: parses as %v, %v; want no less than the wait", c.d, got, d, err)
		}
	}
}

func TestRefusedBy(t *testing.T) {
	req := ledger.AdmitRequest{Global: ledger.GlobalLimit{RPS: 2.5}, Limits: ledger.KeyLimits{RPM: 100, MaxConcurrent: 3}}
	rpm := ledger.Decision{LimitRequests: 100, RemainingRequests: 40, ResetRequests: 30 * time.Second, LimitTokens: 1000, RemainingTokens: 10, RetryAfter: 400 * time.Millisecond}
	cases := []struct {
		reason           string
		limit, remaining int64
		reset            time.Duration
	}{
		{ledger.ReasonGlobalRPS, 3, 0, 400 * time.Millisecond}, // burst: 2.5 rounded up
		{ledger.ReasonConcurrency, 3, 0, 400 * time.Millisecond},
		{ledger.ReasonKeyRPM, 100, 40, 30 * time.Second},
		{ledger.ReasonTPM, 100, 40, 30 * time.Second},
	}
	for _, c := range cases {
		d := rpm
		d.Reason = c.reason
		got := refusedBy(req, d)
		if got.LimitRequests != c.limit || got.RemainingRequests != c.remaining || got.ResetRequests != c.reset {
			t.Errorf("%s: requests %d/%d reset %s, want %d/%d reset %s", c.reason, got.LimitRequests, got.RemainingRequests, got.ResetRequests, c.limit, c.remaining, c.reset)
		}
		if got.LimitTokens != 1000 || got.RemainingTokens != 10 {
			t.Errorf("%s: token figures changed: %+v", c.reason, got)
		}
	}
}

// countGets counts the GET commands a Redis client sends: the key store's
// look-ups.
type countGets struct{ n atomic.Int64 }

func (c *countGets) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *countGets) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (c *countGets) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "get" {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

// TestMadeUpKeysWithinGlobalRate: with the global rate limit on, a flood
// of made-up keys, each looked up in the Redis key store before admission,
// is read from Redis no faster than that rate allows: past its burst, such
// requests get the global limit's 429 without a Redis read, while a key in
// use keeps being served.
func TestMadeUpKeysWithinGlobalRate(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}]}`))
	}))
	defer backend.Close()
	rdb, prefix := redistest.New(t, "lookup-rate")
	gets := &countGets{}
	rdb.AddHook(gets)
	secret, _, err := keys.Create(context.Background(), rdb, prefix, keys.Spec{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	// One read every 100 s: the burst is all the test can spend.
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
backends: [{url: %q}]
auth: {enabled: true, storage: redis}
redis: {url: "redis://127.0.0.1:6379/15"}
rate_limit: {global: {requests_per_second: 0.01, burst_size: 3}}
trusted_proxies: ["127.0.0.1/32"]
`, backend.URL)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, _ := serveOptions(t, Options{Config: cfg, Redis: rdb, RedisPrefix: prefix, Admitter: ledger.NewRedisAdmitter(rdb, prefix), Registerer: reg})
	alice := map[string]string{"Authorization": "Bearer " + secret}
	if resp, b := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m"}`, alice); resp.StatusCode != 200 {
		t.Fatalf("alice: %d %s", resp.StatusCode, b)
	}
	before := gets.n.Load()
	for i := range 20 {
		// From as many clients: one client alone may spend a quarter of
		// the budget (TestRedisStoreLookupsShareOutAmongClients).
		resp, b := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m"}`, map[string]string{
			"Authorization": fmt.Sprintf("Bearer sk-made-up-%d", i), "X-Forwarded-For": fmt.Sprintf("198.51.100.%d", i+1)})
		switch {
		case i < 2 && resp.StatusCode != 401:
			t.Fatalf("made-up key %d within the burst: %d %s, want 401", i, resp.StatusCode, b)
		case i >= 2 && (resp.StatusCode != 429 || !strings.Contains(string(b), "rate_limit_exceeded") || resp.Header.Get("Retry-After") == "" || resp.Header.Get("X-Ratelimit-Limit-Requests") != "3"):
			t.Fatalf("made-up key %d past the burst: %d %v %s, want 429 rate_limit_exceeded with Retry-After and the global limit's headers", i, resp.StatusCode, resp.Header, b)
		}
	}
	if got := gets.n.Load() - before; got != 2 {
		t.Fatalf("20 made-up keys cost %d Redis GETs, want 2 (the rest of the burst)", got)
	}
	if n := counted(t, reg, "llmproxy_admission_rejections_total", map[string]string{"reason": "key_lookup_rate"}); n != 18 {
		t.Errorf("llmproxy_admission_rejections_total{reason=\"key_lookup_rate\"} = %v, want 18", n)
	}
	if resp, b := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m"}`, alice); resp.StatusCode != 200 {
		t.Fatalf("alice after the flood: %d %s", resp.StatusCode, b)
	}
}

// TestLimitsHoldAcrossGateways: two gateways sharing one Redis never let
// more of a key's requests reach the backends at once than its
// max_concurrent, and admit exactly its requests_per_minute, the requests
// refused for concurrency taking none of it.
func TestLimitsHoldAcrossGateways(t *testing.T) {
	const n = 16
	// The backend holds the requests that reach it until each of the n
	// has either reached it or been refused.
	var arrived, refused, settled atomic.Int64
	release := make(chan struct{})
	settle := func() {
		if settled.Add(1) == n {
			close(release)
		}
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		settle()
		<-release
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`))
	}))
	defer backend.Close()
	cfg, err := config.Parse([]byte(fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{id: k1, key: %q}]\nrate_limit: {per_key: {requests_per_minute: 7, max_concurrent: 3}}\n", backend.URL, testKey)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	rdb, prefix := redistest.New(t, "replicas")
	for range 2 {
		// Each gateway has its own client, as separate processes do.
		own := redis.NewClient(rdb.Options())
		t.Cleanup(func() { own.Close() })
		srv, _ := serveOptions(t, Options{Config: cfg, Admitter: ledger.NewRedisAdmitter(own, prefix)})
		urls = append(urls, srv.URL)
	}
	post := func(url string) (*http.Response, string) {
		req, _ := http.NewRequest("POST", url+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return nil, ""
		}
		defer resp.Body.Close()
		var e struct{ Error struct{ Code string } }
		b, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(b, &e)
		return resp, e.Error.Code
	}

	// n requests at once: 3 reach the backend.
	var served atomic.Int64
	done := make(chan struct{})
	for i := range n {
		go func() {
			defer func() { done <- struct{}{} }()
			resp, code := post(urls[i%2])
			switch {
			case resp == nil:
				settle()
			case resp.StatusCode == 200:
				served.Add(1)
			case resp.StatusCode == 429 && code == "rate_limit_exceeded":
				refused.Add(1)
				settle()
			default:
				t.Errorf("status %d %s", resp.StatusCode, code)
				settle()
			}
		}()
	}
	for range n {
		<-done
	}
	if a, s, r := arrived.Load(), served.Load(), refused.Load(); a != 3 || s != 3 || r != n-3 {
		t.Fatalf("%d requests reached the backend, %d were served and %d refused; want 3 (max_concurrent), 3 and %d", a, s, r, n-3)
	}

	// 3 of the 7 requests a minute are taken: 4 more are admitted.
	admitted := 0
	for i := range 10 {
		resp, _ := post(urls[i%2])
		if resp == nil {
			t.FailNow()
		}
		if resp.StatusCode == 200 {
			admitted++
			continue
		}
		retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != 429 || err != nil || retry < 1 || retry > 60 {
			t.Fatalf("request %d: %d, Retry-After %q; want 429 with a retry within the minute", i, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	if admitted != 4 {
		t.Fatalf("admitted %d more, want 4 (7 a minute, 3 served)", admitted)
	}
}

// TestQuotaRefusalSaysWhatDidNotFit: a period quota's refusal may be of a
// request larger than what is left, not only of a quota with nothing left:
// the message says both, and what a request reserves.
func TestQuotaRefusalSaysWhatDidNotFit(t *testing.T) {
	e := rejection(ledger.Decision{Reason: ledger.ReasonQuota, RetryAfter: time.Hour})
	if e.Status != 429 || e.Code != "insufficient_quota" ||
		!strings.Contains(e.Message, "has less left than this request reserves (its prompt's tokens plus max_tokens") ||
		!strings.HasSuffix(e.Message, "; it resets in 1h0m0s") {
		t.Fatalf("%+v", e)
	}
	// The SDKs would sleep the hour before their next try: they are told
	// not to retry.
	if e.RetryAfter != 3600 || e.Header.Get("X-Should-Retry") != "false" {
		t.Fatalf("Retry-After %d, X-Should-Retry %q", e.RetryAfter, e.Header.Get("X-Should-Retry"))
	}
	// A quota held by reservations is a rate limit: retried.
	if e := rejection(ledger.Decision{Reason: ledger.ReasonQuota, HeldByReservations: true, RetryAfter: time.Second}); e.Header.Get("X-Should-Retry") != "" {
		t.Fatalf("held quota: X-Should-Retry %q", e.Header.Get("X-Should-Retry"))
	}
}
