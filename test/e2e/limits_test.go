package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// limitsClient keeps enough idle connections for the workers below, so a
// burst of short requests does not run the machine out of ports.
var limitsClient = &http.Client{
	Timeout:   60 * time.Second,
	Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 128, IdleConnTimeout: 30 * time.Second},
}

// limReply is what a test keeps of one gateway answer.
type limReply struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// limSend POSTs body to gw's chat endpoint with key and extra headers. It
// never fails the test, so workers can call it.
func limSend(gw, key string, body []byte, hdr map[string]string) limReply {
	req, err := http.NewRequest(http.MethodPost, gw+"/v1/chat/completions", strings.NewReader(string(body)))
	if err != nil {
		return limReply{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := limitsClient.Do(req)
	if err != nil {
		return limReply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return limReply{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// limQuickChat is a short non-stream chat request.
func limQuickChat() []byte {
	return []byte(`{"model":"mock-model","messages":[{"role":"user","content":"hello there"}]}`)
}

// limSlowStream is a stream of mockllm's tokens, one per gap.
func limSlowStream() []byte {
	return []byte(`{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"hello there"}]}`)
}

// limAPIError is the OpenAI error shape.
type limAPIError struct {
	Error struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	} `json:"error"`
}

// limCheckError asserts r is an OpenAI-shaped error with status and code,
// and returns its message.
func limCheckError(t testing.TB, what string, r limReply, status int, code string) string {
	t.Helper()
	if r.err != nil {
		t.Fatalf("%s: %v", what, r.err)
	}
	var e limAPIError
	if r.status != status || json.Unmarshal(r.body, &e) != nil || e.Error.Code != code || e.Error.Type == "" || e.Error.Message == "" {
		t.Fatalf("%s: want %d with OpenAI error code %q; got %d %s", what, status, code, r.status, r.body)
	}
	return e.Error.Message
}

// limCheck429 asserts a rate-limit rejection carries Retry-After and the
// x-ratelimit-*-requests headers for limit.
func limCheck429(t testing.TB, what string, r limReply, limit int64) {
	t.Helper()
	limCheckError(t, what, r, 429, "rate_limit_exceeded")
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
		t.Fatalf("%s: Retry-After %q, want whole seconds in 1..60", what, r.header.Get("Retry-After"))
	}
	if got := r.header.Get("X-Ratelimit-Limit-Requests"); got != strconv.FormatInt(limit, 10) {
		t.Fatalf("%s: x-ratelimit-limit-requests %q, want %d; headers %v", what, got, limit, r.header)
	}
	if got := r.header.Get("X-Ratelimit-Remaining-Requests"); got != "0" {
		t.Fatalf("%s: x-ratelimit-remaining-requests %q, want 0", what, got)
	}
	if _, err := time.ParseDuration(r.header.Get("X-Ratelimit-Reset-Requests")); err != nil {
		t.Fatalf("%s: x-ratelimit-reset-requests %q: %v", what, r.header.Get("X-Ratelimit-Reset-Requests"), err)
	}
}

// limFanOut runs n calls of f on workers goroutines (n when workers is 0,
// released together) and returns the replies by index.
func limFanOut(n, workers int, f func(i int) limReply) []limReply {
	out := make([]limReply, n)
	var wg sync.WaitGroup
	if workers == 0 {
		gate := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); <-gate; out[i] = f(i) }()
		}
		close(gate)
		wg.Wait()
		return out
	}
	var next atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				out[i] = f(i)
			}
		}()
	}
	wg.Wait()
	return out
}

// limMaxInflight reads mock_requests_max_inflight from mockllm's metrics.
func limMaxInflight(t testing.TB, mock string) int {
	t.Helper()
	resp, err := http.Get(mock + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "mock_requests_max_inflight" {
			n, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("mock_requests_max_inflight %q", f[1])
			}
			return int(n)
		}
	}
	t.Fatal("mockllm /metrics has no mock_requests_max_inflight")
	return 0
}

func limMockReset(t testing.TB, mock string) {
	t.Helper()
	resp, err := http.Post(mock+"/mock/reset", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("POST /mock/reset: %d", resp.StatusCode)
	}
}

// limMock runs a mockllm whose replies are short unless a request asks
// otherwise.
func limMock(t testing.TB) string {
	addr := freeAddr(t)
	start(t, "mockllm", "--listen", addr, "--tokens", "5")
	mock := "http://" + addr
	waitHTTP(t, mock+"/health")
	return mock
}

// limCluster is two gateways and a meter sharing Redis and a NATS server.
type limCluster struct {
	cfgA, cfgB string
	gwA, gwB   string
	a, b, m    *proc
	redisURL   string
	redisAddrs []string // a Redis Cluster's nodes, instead of redisURL
	prefix     string
	mock       string
}

func limStartCluster(t *testing.T) *limCluster {
	rurl, prefix := redisPrefix(t, "e2elim")
	c := &limCluster{redisURL: rurl, prefix: prefix}
	c.configure(t, fmt.Sprintf("{ url: %q, prefix: %q }", rurl, prefix), "")
	return c
}

// limStartRedisCluster is limStartCluster on a real three-node Redis
// Cluster (redis.addrs), with a global requests-per-second limit on: the
// global bucket's slot is on another node than most keys', so each
// admission runs the key's script and the global one side by side.
func limStartRedisCluster(t *testing.T) *limCluster {
	addrs := redisCluster(t)
	c := &limCluster{prefix: "e2elim", redisAddrs: addrs}
	c.configure(t, fmt.Sprintf("{ addrs: [%s], prefix: %q }", strings.Join(addrs, ", "), c.prefix),
		"  global: { requests_per_second: 100000, burst_size: 100000 }\n")
	return c
}

// configure writes the two gateways' configs, with redis set to redisYAML
// and extra lines in rate_limit.
func (c *limCluster) configure(t *testing.T, redisYAML, rateLimit string) {
	_, natsURL := natsServer(t)
	c.mock = limMock(t)
	dir := t.TempDir()
	conf := func(name, listen string) string {
		path := filepath.Join(dir, name+".yaml")
		writeFile(t, path, fmt.Sprintf(`
listen: %q
data_dir: %q
nats: { url: %q }
redis: %s
backends:
  - url: %q
auth:
  storage: redis
rate_limit:
  storage: redis
  lease_ttl: 2s
%slogging: { level: info }
`, listen, filepath.Join(dir, name), natsURL, redisYAML, c.mock, rateLimit))
		return path
	}
	la, lb := freeAddr(t), freeAddr(t)
	c.cfgA, c.cfgB = conf("a", la), conf("b", lb)
	c.gwA, c.gwB = "http://"+la, "http://"+lb
}

// run starts the processes, once the keys exist.
func (c *limCluster) run(t *testing.T) {
	meterAdmin := freeAddr(t)
	c.a = start(t, "llmproxy", "serve", "--config", c.cfgA, "--target", "gateway")
	c.b = start(t, "llmproxy", "serve", "--config", c.cfgB, "--target", "gateway")
	c.m = start(t, "llmproxy", "serve", "--config", c.cfgA, "--target", "meter", "--admin-listen", meterAdmin)
	waitHTTP(t, c.gwA+"/healthz")
	waitHTTP(t, c.gwB+"/healthz")
	waitHTTP(t, "http://"+meterAdmin+"/readyz")
}

// limKey is one key made with `llmproxy keys create`.
type limKey struct{ id, secret string }

func limCreateKey(t *testing.T, cfg string, args ...string) limKey {
	t.Helper()
	out, err := runCLI(t, append([]string{"keys", "create", "--config", cfg, "--json"}, args...)...)
	if err != nil {
		t.Fatalf("keys create %v: %v", args, err)
	}
	var doc struct {
		Key    string `json:"key"`
		Record struct {
			ID string `json:"id"`
		} `json:"record"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.Key == "" || doc.Record.ID == "" {
		t.Fatalf("keys create %v printed %q: %v", args, out, err)
	}
	return limKey{id: doc.Record.ID, secret: doc.Key}
}

// TestLimitsAcrossGateways proves the per-key limits of issue 4 over two
// gateway processes sharing Redis, then that nothing in Redis or the logs
// holds a secret.
func TestLimitsAcrossGateways(t *testing.T) {
	c := limStartCluster(t)
	kRPM := limCreateKey(t, c.cfgA, "--id", "rpm", "--name", "rpm", "--rpm", "600")
	kConc := limCreateKey(t, c.cfgA, "--id", "conc", "--name", "conc", "--max-concurrent", "5")
	kQuota := limCreateKey(t, c.cfgA, "--id", "quota", "--name", "quota", "--quota", "10000", "--period", "daily")
	kLease := limCreateKey(t, c.cfgA, "--id", "lease", "--name", "lease", "--max-concurrent", "2")
	kT := limCreateKey(t, c.cfgA, "--name", "t")
	secrets := []string{kRPM.secret, kConc.secret, kQuota.secret, kLease.secret, kT.secret}
	c.run(t)

	t.Run("RPM", func(t *testing.T) { limRPMCase(t, c, kRPM.secret, 600) })
	t.Run("MaxConcurrent", func(t *testing.T) { limConcCase(t, c, kConc.secret, 5) })
	t.Run("Quota", func(t *testing.T) {
		cases := []struct {
			name  string
			setup func(t *testing.T) (gws []string, cfg, key, keyID string)
		}{
			{"single-binary", func(t *testing.T) ([]string, string, string, string) {
				dir := t.TempDir()
				listen, admin := freeAddr(t), freeAddr(t)
				cfg := filepath.Join(dir, "llmproxy.yaml")
				const secret = "sk-llmproxy-e2e-quota-0003"
				writeFile(t, cfg, fmt.Sprintf(`
listen: %q
data_dir: %q
admin: { listen: %q, token: "e2e-admin-token" }
backends:
  - url: %q
api_keys:
  - key: %q
    id: quota1
    total_quota: 10000
    quota_reset_period: daily
logging: { level: warn }
`, listen, filepath.Join(dir, "data"), admin, c.mock, secret))
				start(t, "llmproxy", "serve", "--config", cfg)
				waitHTTP(t, "http://"+listen+"/healthz")
				return []string{"http://" + listen}, cfg, secret, "quota1"
			}},
			{"distributed", func(t *testing.T) ([]string, string, string, string) {
				return []string{c.gwA, c.gwB}, c.cfgA, kQuota.secret, kQuota.id
			}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				gws, cfg, key, keyID := tc.setup(t)
				limQuotaCase(t, gws, cfg, key, keyID)
			})
		}
	})

	t.Run("LeaseExpiry", func(t *testing.T) {
		// Two long streams hold both of the key's slots through gateway A.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for i := 0; i < 2; i++ {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.gwA+"/v1/chat/completions", strings.NewReader(string(limSlowStream())))
			req.Header.Set("Authorization", "Bearer "+kLease.secret)
			req.Header.Set("X-Mock-Tokens", "600")
			req.Header.Set("X-Mock-Gap", "50ms")
			resp, err := limitsClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("long stream %d: %d %s", i, resp.StatusCode, b)
			}
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "data: ") {
				t.Fatalf("long stream %d: first line %q, %v", i, line, err)
			}
		}
		r := limSend(c.gwB, kLease.secret, limQuickChat(), nil)
		limCheckError(t, "third request while two streams run", r, 429, "rate_limit_exceeded")

		c.a.stop(syscall.SIGKILL)
		killed := time.Now()
		r = limSend(c.gwB, kLease.secret, limQuickChat(), nil)
		if time.Since(killed) < time.Second {
			// The leases were renewed at most 1 s (ttl/2) before the kill:
			// they still hold.
			msg := limCheckError(t, "request right after the kill", r, 429, "rate_limit_exceeded")
			if !strings.Contains(msg, "in flight") {
				t.Fatalf("request right after the kill refused for another reason: %q", msg)
			}
		}
		var freed time.Duration
		eventually(t, 4*time.Second, "key usable again within lease_ttl + 2 s of the kill", func() (bool, string) {
			r := limSend(c.gwB, kLease.secret, limQuickChat(), nil)
			if r.err == nil && r.status == 200 {
				freed = time.Since(killed)
				return true, ""
			}
			return false, fmt.Sprintf("%d %s %v", r.status, r.body, r.err)
		})
		t.Logf("lease_ttl 2s: key usable again %s after SIGKILL of the gateway holding its leases", freed.Round(time.Millisecond))
	})

	t.Run("Plaintext", func(t *testing.T) {
		r := limSend(c.gwB, kT.secret, limQuickChat(), nil)
		if r.err != nil || r.status != 200 {
			t.Fatalf("key made by keys create: %d %s %v", r.status, r.body, r.err)
		}
		opt, _ := redis.ParseURL(c.redisURL)
		rdb := redis.NewClient(opt)
		defer rdb.Close()
		ctx := context.Background()
		sum := sha256.Sum256([]byte(kT.secret))
		hash := hex.EncodeToString(sum[:])
		hashSeen, nkeys := false, 0
		iter := rdb.Scan(ctx, 0, c.prefix+":*", 1000).Iterator()
		for iter.Next(ctx) {
			name := iter.Val()
			nkeys++
			var vals []string
			switch typ := rdb.Type(ctx, name).Val(); typ {
			case "string":
				vals = []string{rdb.Get(ctx, name).Val()}
			case "hash":
				for k, v := range rdb.HGetAll(ctx, name).Val() {
					vals = append(vals, k, v)
				}
			case "set":
				vals = rdb.SMembers(ctx, name).Val()
			case "zset":
				vals = rdb.ZRange(ctx, name, 0, -1).Val()
			case "list":
				vals = rdb.LRange(ctx, name, 0, -1).Val()
			case "none":
				continue // expired meanwhile
			default:
				t.Fatalf("key %s has type %s, which this test does not read", name, typ)
			}
			all := name + "\n" + strings.Join(vals, "\n")
			if limHasSecret(all, secrets) {
				t.Fatalf("Redis key %s holds a secret in the clear: %q", name, all)
			}
			if strings.Contains(strings.ToLower(all), hash) {
				hashSeen = true
			}
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		if !hashSeen {
			t.Fatalf("the sha256 of the key made by keys create is nowhere in Redis (%d keys)", nkeys)
		}
		for _, p := range []*proc{c.a, c.b, c.m} {
			if out := p.out.String(); limHasSecret(out, secrets) {
				t.Fatalf("output of %v holds a secret in the clear:\n%s", p.args, tail(out, 4000))
			}
		}
		t.Logf("%d Redis keys under %s read: no secret; the new key is stored by its sha256", nkeys, c.prefix)
	})
}

// TestLimitsOnRedisCluster runs the distributed setup on a real three-node
// Redis Cluster: keys made, listed, disabled and deleted with `llmproxy
// keys`; two gateways (with a global limit, so that each admission also
// runs the global bucket's script on its own node) and a meter; the key's
// RPM and concurrency hold across the gateways, the quota holds and is
// settled, and `llmproxy usage` reads it back.
func TestLimitsOnRedisCluster(t *testing.T) {
	c := limStartRedisCluster(t)
	kRPM := limCreateKey(t, c.cfgA, "--id", "rpm", "--name", "rpm", "--rpm", "300")
	kConc := limCreateKey(t, c.cfgA, "--id", "conc", "--name", "conc", "--max-concurrent", "3")
	// A user id makes the meter also apply per-user totals, in the user's
	// own slot.
	kQuota := limCreateKey(t, c.cfgA, "--id", "quota", "--name", "quota", "--user", "alice", "--quota", "10000", "--period", "daily")
	kGone := limCreateKey(t, c.cfgA, "--id", "gone", "--name", "gone")
	c.run(t)

	t.Run("RPM", func(t *testing.T) { limRPMCase(t, c, kRPM.secret, 300) })
	t.Run("MaxConcurrent", func(t *testing.T) { limConcCase(t, c, kConc.secret, 3) })
	t.Run("Quota", func(t *testing.T) {
		limQuotaCase(t, []string{c.gwA, c.gwB}, c.cfgA, kQuota.secret, kQuota.id)
		// The per-user totals, kept in the user's slot, match the key's.
		rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.redisAddrs})
		defer rdb.Close()
		user, err := ledger.NewRedis(rdb, c.prefix).UsageByUser(context.Background(), "alice", ledger.Daily, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		rows, err := usageOf(t, c.cfgA)
		if err != nil {
			t.Fatal(err)
		}
		if k := rows[kQuota.id]; user.TotalTokens != k.TotalTokens || user.Requests != k.Requests || k.TotalTokens == 0 {
			t.Fatalf("user alice: %+v; her one key: %+v", user, k)
		}
	})
	t.Run("KeyLifecycle", func(t *testing.T) {
		if r := limSend(c.gwB, kGone.secret, limQuickChat(), nil); r.err != nil || r.status != 200 {
			t.Fatalf("new key: %d %s %v", r.status, r.body, r.err)
		}
		out, err := runCLI(t, "keys", "list", "--config", c.cfgB)
		if err != nil || !strings.Contains(out, "gone") || !strings.Contains(out, "quota") {
			t.Fatalf("keys list: %v\n%s", err, out)
		}
		if _, err := runCLI(t, "keys", "disable", "--config", c.cfgB, "gone"); err != nil {
			t.Fatal(err)
		}
		// Gateways cache a key for 5 s, but a change is announced
		// and both forget the key at once (well within those 5 s).
		refused := func(what string, status int) {
			eventually(t, 2500*time.Millisecond, "both gateways refuse the "+what+" key", func() (bool, string) {
				for _, gw := range []string{c.gwA, c.gwB} {
					if r := limSend(gw, kGone.secret, limQuickChat(), nil); r.status != status {
						return false, fmt.Sprintf("%s: %d %s", gw, r.status, r.body)
					}
				}
				return true, ""
			})
		}
		refused("disabled", 403)
		if _, err := runCLI(t, "keys", "delete", "--config", c.cfgA, "gone"); err != nil {
			t.Fatal(err)
		}
		refused("deleted", 401)
		if out, err := runCLI(t, "keys", "list", "--config", c.cfgA); err != nil || strings.Contains(out, "gone") {
			t.Fatalf("keys list after delete: %v\n%s", err, out)
		}
	})
	for _, p := range []*proc{c.a, c.b, c.m} {
		for _, line := range strings.Split(p.out.String(), "\n") {
			if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
				t.Errorf("%v logged: %s", p.args, line)
			}
		}
	}
}

// limRPMCase sends 2,000 requests at a key with requests_per_minute limit,
// alternating between the two gateways: limit ± 1% are admitted, and both
// gateways admit some.
func limRPMCase(t *testing.T, c *limCluster, secret string, limit int) {
	const n = 2000
	began := time.Now()
	replies := limFanOut(n, 16, func(i int) limReply {
		gw := c.gwA
		if i%2 == 1 {
			gw = c.gwB
		}
		return limSend(gw, secret, limQuickChat(), nil)
	})
	took := time.Since(began)
	if took > 50*time.Second {
		t.Fatalf("%d requests took %s: not within one 60 s window, the count proves nothing", n, took)
	}
	admitted, perGW := 0, [2]int{}
	for i, r := range replies {
		switch {
		case r.err == nil && r.status == 200:
			admitted++
			perGW[i%2]++
		default:
			limCheck429(t, fmt.Sprintf("request %d", i), r, int64(limit))
		}
	}
	t.Logf("RPM %d: %d of %d admitted in %s (gateway A %d, B %d)", limit, admitted, n, took.Round(time.Millisecond), perGW[0], perGW[1])
	if admitted < limit-limit/100 || admitted > limit+limit/100 {
		t.Fatalf("admitted %d, want %d ± 1%%", admitted, limit)
	}
	if perGW[0] == 0 || perGW[1] == 0 {
		t.Fatalf("one gateway admitted nothing: %v", perGW)
	}
}

// limConcCase runs 50 slow streams at a key with max_concurrent limit
// through both gateways: mockllm never sees more than limit at once, and at
// least limit are served.
func limConcCase(t *testing.T, c *limCluster, secret string, limit int) {
	limMockReset(t, c.mock)
	hdr := map[string]string{"X-Mock-Tokens": "20", "X-Mock-Gap": "50ms"}
	replies := limFanOut(50, 0, func(i int) limReply {
		gw := c.gwA
		if i%2 == 1 {
			gw = c.gwB
		}
		return limSend(gw, secret, limSlowStream(), hdr)
	})
	ok := 0
	for i, r := range replies {
		if r.err == nil && r.status == 200 {
			if !strings.Contains(string(r.body), "data: [DONE]") {
				t.Fatalf("stream %d did not finish: %q", i, r.body)
			}
			ok++
			continue
		}
		limCheckError(t, fmt.Sprintf("stream %d", i), r, 429, "rate_limit_exceeded")
		if r.header.Get("Retry-After") == "" {
			t.Fatalf("stream %d: 429 without Retry-After", i)
		}
	}
	maxIn := limMaxInflight(t, c.mock)
	t.Logf("max_concurrent %d: %d of 50 streams served, %d refused; mockllm max inflight %d", limit, ok, 50-ok, maxIn)
	if maxIn > limit || maxIn < 1 {
		t.Fatalf("mockllm saw %d streams at once, want ≤ %d", maxIn, limit)
	}
	if ok < limit {
		t.Fatalf("only %d streams served, want ≥ %d", ok, limit)
	}
}

// limHasSecret reports whether s holds any secret, or the random part of one.
func limHasSecret(s string, secrets []string) bool {
	for _, k := range secrets {
		if strings.Contains(s, k) || strings.Contains(s, strings.TrimPrefix(k, "sk-llmproxy-")) {
			return true
		}
	}
	return false
}

// limQuotaCase sends 100 concurrent requests of about 300 tokens each at a key
// with a quota of 10,000 tokens: the tokens served must not exceed the quota
// by more than the largest request, and once the meter has settled them the
// key is refused with insufficient_quota. While they run, a request the
// quota has room for once the others settle is refused as held by them
// (rate_limit_exceeded, Retry-After 1), not as a quota used up.
func limQuotaCase(t *testing.T, gws []string, cfg, key, keyID string) {
	const quota = 10000
	body := []byte(`{"model":"mock-model","max_tokens":290,"messages":[{"role":"user","content":"tell me a long story please"}]}`)
	// Replies are capped by max_tokens and take about 0.3 s, so the
	// requests overlap.
	hdr := map[string]string{"X-Mock-Tokens": "5000", "X-Mock-Gap": "1ms"}
	replies := limFanOut(100, 0, func(i int) limReply { return limSend(gws[i%len(gws)], key, body, hdr) })
	var served, largest, admitted, heldRefusals int64
	for i, r := range replies {
		if r.err == nil && r.status == 200 {
			u := usageFromJSON(t, r.body)
			total := u.prompt + u.completion
			if u.completion != 290 {
				t.Fatalf("request %d: %d completion tokens, want 290 (capped by max_tokens)", i, u.completion)
			}
			served += total
			largest = max(largest, total)
			admitted++
			continue
		}
		var e limAPIError
		if r.err == nil && json.Unmarshal(r.body, &e) == nil && e.Error.Code == "rate_limit_exceeded" {
			limCheckError(t, fmt.Sprintf("request %d", i), r, 429, "rate_limit_exceeded")
			if r.header.Get("Retry-After") != "1" || !strings.Contains(e.Error.Message, "in flight") {
				t.Fatalf("request %d: %s, Retry-After %q; want a quota held by requests in flight, retry after 1", i, r.body, r.header.Get("Retry-After"))
			}
			heldRefusals++
			continue
		}
		limCheckError(t, fmt.Sprintf("request %d", i), r, 429, "insufficient_quota")
		if r.header.Get("Retry-After") == "" {
			t.Fatalf("request %d: insufficient_quota without Retry-After (a daily quota resets)", i)
		}
	}
	t.Logf("quota %d: %d of 100 admitted, %d tokens served (largest request %d), %d refused as held by requests in flight", quota, admitted, served, largest, heldRefusals)
	if admitted == 0 {
		t.Fatal("no request admitted")
	}
	if served > quota+largest {
		t.Fatalf("served %d tokens, more than quota %d + largest request %d", served, quota, largest)
	}
	settle := func() {
		eventually(t, 30*time.Second, "meter settled", func() (bool, string) {
			rows, err := usageOf(t, cfg)
			if err != nil {
				return false, err.Error()
			}
			// Every request, admitted or not, has its event; the tokens
			// are those of the admitted ones.
			r := rows[keyID]
			return r.Requests >= admitted && r.TotalTokens == served, fmt.Sprintf("%+v, want %d tokens", r, served)
		})
	}
	settle()
	// The next request is refused — unless the quota still has room for
	// it, in which case it must be admitted, and the one after is asked.
	for extra := 0; ; extra++ {
		r := limSend(gws[0], key, body, hdr)
		if r.err == nil && r.status == 200 {
			u := usageFromJSON(t, r.body)
			if served+290 > quota || extra >= 3 {
				t.Fatalf("request after settling admitted with %d of %d tokens used", served, quota)
			}
			served += u.prompt + u.completion
			admitted++
			t.Logf("quota had room after settling: one more request admitted (%d tokens used)", served)
			settle()
			continue
		}
		msg := limCheckError(t, "request after the quota is used", r, 429, "insufficient_quota")
		if !strings.Contains(msg, "quota") || r.header.Get("Retry-After") == "" {
			t.Fatalf("insufficient_quota: message %q, Retry-After %q", msg, r.header.Get("Retry-After"))
		}
		break
	}
	if served > quota+largest {
		t.Fatalf("served %d tokens, more than quota %d + largest request %d", served, quota, largest)
	}
}

// limScenario2 is upstream-configs/02-enterprise-assistant.yaml verbatim, with
// what a running gateway needs added before it: where to listen, a backend,
// and the test itself as a trusted proxy so it can limSend from the keys'
// allowed networks.
const limScenario2 = `# Upstream scenario 2: internal assistant for 1,000 employees on TGI (2 servers).
auth:
  enabled: true
  storage: "file"

api_keys:
  - key: "sk-llmproxy-dev-team-001"
    name: "R&D department"
    total_quota: 500000  # 500k tokens per day
    allowed_ips: ["10.0.1.0/24"]

  - key: "sk-llmproxy-product-team-001"
    name: "Product department"
    total_quota: 200000
    allowed_ips: ["10.0.2.0/24"]

rate_limit:
  per_key:
    requests_per_minute: 100
    max_concurrent: 5
`

// TestLimitsScenario2 runs upstream scenario 2 in the single binary:
// requests_per_minute 100 and max_concurrent 5 mean 100 a minute and 5 at
// once — not 0, not unlimited.
func TestLimitsScenario2(t *testing.T) {
	mock := limMock(t)
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, fmt.Sprintf(`listen: %q
data_dir: %q
admin: { listen: %q, token: "e2e-admin-token" }
trusted_proxies: ["127.0.0.1"]
logging: { level: warn }
backends:
  - url: %q
`, listen, filepath.Join(dir, "data"), admin, mock)+limScenario2)
	start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/healthz")

	// 5 at once: 20 slow streams of the product key together.
	limMockReset(t, mock)
	slow := map[string]string{"X-Forwarded-For": "10.0.2.7", "X-Mock-Tokens": "20", "X-Mock-Gap": "50ms"}
	replies := limFanOut(20, 0, func(int) limReply { return limSend(gw, "sk-llmproxy-product-team-001", limSlowStream(), slow) })
	ok := 0
	for i, r := range replies {
		if r.err == nil && r.status == 200 {
			ok++
			continue
		}
		limCheckError(t, fmt.Sprintf("stream %d", i), r, 429, "rate_limit_exceeded")
	}
	maxIn := limMaxInflight(t, mock)
	t.Logf("scenario 2, max_concurrent 5: %d of 20 streams served, mockllm max inflight %d", ok, maxIn)
	if maxIn != 5 {
		t.Fatalf("mockllm saw %d requests at once, want exactly 5", maxIn)
	}

	// 100 a minute: 150 quick requests of the R&D key.
	quick := map[string]string{"X-Forwarded-For": "10.0.1.7"}
	// Two workers: a worker's previous lease may not be released yet when
	// its next request arrives, so at most 4 leases are held, under the 5.
	replies = limFanOut(150, 2, func(int) limReply { return limSend(gw, "sk-llmproxy-dev-team-001", limQuickChat(), quick) })
	admitted := 0
	for i, r := range replies {
		if r.err == nil && r.status == 200 {
			admitted++
			continue
		}
		limCheck429(t, fmt.Sprintf("request %d", i), r, 100)
	}
	t.Logf("scenario 2, requests_per_minute 100: %d of 150 admitted", admitted)
	if admitted != 100 {
		t.Fatalf("admitted %d of 150, want exactly 100", admitted)
	}
	// The allow list still holds: the R&D key from the product network.
	r := limSend(gw, "sk-llmproxy-dev-team-001", limQuickChat(), map[string]string{"X-Forwarded-For": "10.0.2.7"})
	limCheckError(t, "R&D key from 10.0.2.7", r, 403, "ip_not_allowed")
}

// TestLimitsKeyErrors checks that each refused key gets the right status and
// a message that says what is wrong and what to do.
func TestLimitsKeyErrors(t *testing.T) {
	mock := limMock(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	const (
		good     = "sk-llmproxy-e2e-good-0010"
		disabled = "sk-llmproxy-e2e-disabled-0011"
		expired  = "sk-llmproxy-e2e-expired-0012"
		ipless   = "sk-llmproxy-e2e-ipless-0013"
		modeless = "sk-llmproxy-e2e-modeless-0014"
	)
	writeFile(t, cfg, fmt.Sprintf(`
listen: %q
data_dir: %q
backends:
  - url: %q
api_keys:
  - { key: %q, id: good }
  - { key: %q, id: disabled, status: disabled }
  - { key: %q, id: expired, expires_at: "2020-01-02T03:04:05Z" }
  - { key: %q, id: ipless, allowed_ips: ["10.9.0.0/16", "fd00::/8"] }
  - { key: %q, id: modeless, allowed_models: ["other-model"] }
logging: { level: warn }
`, listen, filepath.Join(dir, "data"), mock, good, disabled, expired, ipless, modeless))
	srv := start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/healthz")

	if r := limSend(gw, good, limQuickChat(), nil); r.err != nil || r.status != 200 {
		t.Fatalf("good key: %d %s %v", r.status, r.body, r.err)
	}
	cases := []struct {
		name, key string
		status    int
		code      string
		says      []string // what the message must name
	}{
		{"no key", "", 401, "invalid_api_key", []string{"Authorization: Bearer"}},
		{"unknown key", "sk-llmproxy-e2e-unknown-0099", 401, "invalid_api_key", []string{"invalid API key"}},
		{"disabled key", disabled, 403, "key_disabled", []string{"disabled", "administrator"}},
		{"expired key", expired, 403, "key_expired", []string{"expired", "2020-01-02T03:04:05Z"}},
		{"IP not allowed", ipless, 403, "ip_not_allowed", []string{"127.0.0.1"}},
		{"model not allowed", modeless, 403, "model_not_allowed", []string{"mock-model"}},
	}
	for _, tc := range cases {
		r := limSend(gw, tc.key, limQuickChat(), nil)
		msg := limCheckError(t, tc.name, r, tc.status, tc.code)
		for _, s := range tc.says {
			if !strings.Contains(msg, s) {
				t.Errorf("%s: message %q does not say %q", tc.name, msg, s)
			}
		}
		if tc.key != "" && strings.Contains(msg, strings.TrimPrefix(tc.key, "sk-llmproxy-")) {
			t.Errorf("%s: message %q repeats the secret", tc.name, msg)
		}
		t.Logf("%s: %d %s: %s", tc.name, r.status, tc.code, msg)
	}
	secrets := []string{good, disabled, expired, ipless, modeless, "sk-llmproxy-e2e-unknown-0099"}
	if out := srv.out.String(); limHasSecret(out, secrets) {
		t.Fatalf("the gateway's output holds a secret:\n%s", tail(out, 4000))
	}
}

// TestLimitsRedisOutage: a gateway whose keys and limits live in Redis
// keeps answering while Redis is SIGKILLed for 6 s and restarted. Before and
// after, requests are served; in between each gets a 503 in OpenAI's error
// shape (the rate limiter or the key store is unavailable) within seconds,
// or is admitted by Redis once it is back: never a hang, never a request
// let through unchecked. Once Redis is back the gateway serves again
// without a restart, its log stays JSON, and the meter has counted exactly
// the tokens served.
func TestLimitsRedisOutage(t *testing.T) {
	rd := startRedisd(t)
	c := &limCluster{redisURL: rd.url(), prefix: "e2eout"}
	c.configure(t, fmt.Sprintf("{ url: %q, prefix: %q }", c.redisURL, c.prefix),
		"  per_key: { requests_per_minute: 100000, max_concurrent: 1000 }\n")
	cfg := c.cfgA // one gateway and the meter are enough here
	k := limCreateKey(t, cfg, "--id", "out", "--name", "out", "--quota", "1000000000", "--period", "daily")
	gwProc := start(t, "llmproxy", "serve", "--config", cfg, "--target", "gateway")
	start(t, "llmproxy", "serve", "--config", cfg, "--target", "meter")
	gw := c.gwA
	waitHTTP(t, gw+"/healthz")

	type sent struct {
		at, took time.Duration
		r        limReply
	}
	var (
		mu    sync.Mutex
		all   []sent
		wg    sync.WaitGroup
		begin = time.Now()
	)
	send := func() {
		wg.Go(func() {
			at := time.Since(begin)
			r := limSend(gw, k.secret, limQuickChat(), nil)
			mu.Lock()
			all = append(all, sent{at: at, took: time.Since(begin) - at, r: r})
			mu.Unlock()
		})
	}
	load := func(d time.Duration) {
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
			send()
		}
	}
	load(2 * time.Second)
	killed := time.Since(begin)
	rd.kill()
	load(6 * time.Second)
	restarting := time.Since(begin)
	rd.start()
	restarted := time.Since(begin)
	// Served again without a restart of the gateway.
	var tokensServed int64
	eventually(t, 20*time.Second, "a request served after Redis restarted", func() (bool, string) {
		r := limSend(gw, k.secret, limQuickChat(), nil)
		if r.err == nil && r.status == 200 {
			u := usageFromJSON(t, r.body)
			tokensServed += u.prompt + u.completion
			return true, ""
		}
		return false, fmt.Sprintf("%d %s %v", r.status, r.body, r.err)
	})
	load(2 * time.Second)
	wg.Wait()

	var served, refused int
	for _, s := range all {
		r := s.r
		if r.err != nil {
			t.Fatalf("request sent at %s: no answer: %v", s.at.Round(time.Millisecond), r.err)
		}
		if s.took > 10*time.Second {
			t.Fatalf("request sent at %s took %s", s.at.Round(time.Millisecond), s.took)
		}
		switch r.status {
		case 200:
			// Served while Redis was down from start to end: nothing can
			// have admitted it. (A request may wait in the admission
			// pipeline and be admitted once Redis is back.)
			if s.at > killed+100*time.Millisecond && s.at+s.took < restarting {
				t.Fatalf("request sent at %s and answered within Redis's outage (%s..%s) was served: its limits went unchecked",
					s.at.Round(time.Millisecond), killed.Round(time.Millisecond), restarting.Round(time.Millisecond))
			}
			u := usageFromJSON(t, r.body)
			tokensServed += u.prompt + u.completion
			served++
		case 503:
			var e limAPIError
			if json.Unmarshal(r.body, &e) != nil || e.Error.Type == "" || e.Error.Message == "" ||
				(e.Error.Code != "rate_limiter_unavailable" && e.Error.Code != "key_store_unavailable") {
				t.Fatalf("request sent at %s: 503 %s; want OpenAI's error shape, the rate limiter or key store unavailable", s.at.Round(time.Millisecond), r.body)
			}
			if s.at < killed || s.at > restarted+15*time.Second {
				t.Fatalf("request sent at %s refused outside the outage (%s..%s): %s", s.at.Round(time.Millisecond),
					killed.Round(time.Millisecond), restarted.Round(time.Millisecond), r.body)
			}
			refused++
		default:
			t.Fatalf("request sent at %s: %d %s", s.at.Round(time.Millisecond), r.status, r.body)
		}
	}
	t.Logf("%d requests: %d served, %d refused with 503 while Redis was down (%s..%s)", len(all), served, refused,
		killed.Round(time.Millisecond), restarted.Round(time.Millisecond))
	if refused == 0 {
		t.Fatal("no request refused while Redis was down")
	}
	for _, line := range strings.Split(strings.TrimSpace(gwProc.out.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("the gateway's log has a line that is not JSON: %q", line)
		}
	}
	eventually(t, 30*time.Second, "the meter counted exactly the tokens served", func() (bool, string) {
		rows, err := usageOf(t, cfg)
		if err != nil {
			return false, err.Error()
		}
		r := rows[k.id]
		return r.TotalTokens == tokensServed, fmt.Sprintf("%+v, want %d tokens", r, tokensServed)
	})
}
