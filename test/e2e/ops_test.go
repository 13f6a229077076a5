package e2e

// Operating the binary: /metrics parsed with the Prometheus text parser,
// /healthz and /readyz on every target, the JSON access log, SIGTERM with
// open streams, SIGHUP reloads.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// opsConfig is a single-binary config with key alpha (and beta when
// withBeta), the given backends YAML and extra top-level YAML.
func opsConfig(listen, admin, dataDir, backends, hook string, withBeta bool, extra string) string {
	beta := ""
	if withBeta {
		beta = fmt.Sprintf("  - key: %q\n    id: beta\n    user_id: user_b\n", keyBeta)
	}
	hookYAML := ""
	if hook != "" {
		hookYAML = fmt.Sprintf("usage_hook:\n  url: %q\n  retry: 20\n", hook)
	}
	return fmt.Sprintf(`
listen: %q
data_dir: %q
admin: { listen: %q, token: "e2e-admin-token" }
server: { drain_timeout: 20s }
backends:
%s%s
auth: { enabled: true, storage: file }
api_keys:
  - key: %q
    id: alpha
    name: Alpha team
    user_id: user_a
    quota_reset_period: daily
%slogging: { level: info }
%s`, listen, dataDir, admin, backends, hookYAML, keyAlpha, beta, extra)
}

func opsBackend(url, name string) string {
	return fmt.Sprintf("  - url: %q\n    name: %q\n", url, name)
}

// opsFamilies scrapes url and parses it with the Prometheus text parser.
func opsFamilies(t testing.TB, url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

func TestOpsMetrics(t *testing.T) {
	mock := startMock(t, "--tokens", "5")

	// The usage hook fails each event's first attempt (retries); a second
	// endpoint refuses everything (dead letters).
	var mu sync.Mutex
	seen := map[string]bool{}
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-LLMProxy-Event-Id")
		mu.Lock()
		first := !seen[id]
		seen[id] = true
		mu.Unlock()
		if first {
			w.WriteHeader(503)
			return
		}
		w.WriteHeader(204)
	}))
	defer flaky.Close()
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(400) }))
	defer refusing.Close()

	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, opsConfig(listen, admin, filepath.Join(dir, "data"), opsBackend(mock, "mockllm"), flaky.URL, true,
		fmt.Sprintf("webhooks:\n  - name: refusing\n    url: %q\n", refusing.URL)))
	start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/readyz")

	mixedLoad(t, gw, mock, keyAlpha, "ops-metrics", 6)
	if resp, _ := post(t, gw+"/v1/chat/completions", "sk-llmproxy-not-a-key-0000", "", chatBody(1, false, false), nil); resp.StatusCode != 401 {
		t.Fatalf("bad key: %d", resp.StatusCode)
	}

	// The admin listener serves runtime profiles to the admin token only.
	for _, tc := range []struct {
		token string
		code  int
	}{{"e2e-admin-token", 200}, {"", 401}} {
		req, _ := http.NewRequest("GET", "http://"+admin+"/debug/pprof/heap?debug=1", nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || (tc.code == 200) != strings.Contains(string(b), "# HeapInuse") {
			t.Fatalf("heap profile with token %q: %d %.200s", tc.token, resp.StatusCode, b)
		}
	}

	type want struct {
		typ    dto.MetricType
		labels []string
	}
	wants := map[string]want{
		// Upstream names.
		"llmproxy_requests_total":        {dto.MetricType_COUNTER, []string{"path", "stream", "backend", "status"}},
		"llmproxy_latency_ms":            {dto.MetricType_HISTOGRAM, nil},
		"llmproxy_webhook_success_total": {dto.MetricType_COUNTER, nil},
		"llmproxy_webhook_failure_total": {dto.MetricType_COUNTER, nil},
		"llmproxy_usage_tokens_total":    {dto.MetricType_COUNTER, []string{"type"}},
		// DESIGN §9 additions.
		"llmproxy_ttft_ms":                       {dto.MetricType_HISTOGRAM, nil},
		"llmproxy_inflight_requests":             {dto.MetricType_GAUGE, nil},
		"llmproxy_backend_up":                    {dto.MetricType_GAUGE, []string{"backend"}},
		"llmproxy_admission_rejections_total":    {dto.MetricType_COUNTER, []string{"reason"}},
		"llmproxy_events_published_total":        {dto.MetricType_COUNTER, nil},
		"llmproxy_events_publish_failures_total": {dto.MetricType_COUNTER, nil},
		"llmproxy_events_outbox_depth":           {dto.MetricType_GAUGE, nil},
		"llmproxy_meter_events_applied_total":    {dto.MetricType_COUNTER, nil},
		"llmproxy_meter_lag":                     {dto.MetricType_GAUGE, nil},
		"llmproxy_webhook_retries_total":         {dto.MetricType_COUNTER, nil},
		"llmproxy_webhook_dlq_total":             {dto.MetricType_COUNTER, nil},
		"llmproxy_webhook_dlq_depth":             {dto.MetricType_GAUGE, nil},
		"llmproxy_webhook_skipped_total":         {dto.MetricType_COUNTER, []string{"endpoint"}},
	}
	var fams map[string]*dto.MetricFamily
	eventually(t, 60*time.Second, "every metric exported", func() (bool, string) {
		var err error
		fams, err = opsFamilies(t, "http://"+admin+"/metrics")
		if err != nil {
			return false, err.Error()
		}
		var missing []string
		for name := range wants {
			if _, ok := fams[name]; !ok {
				missing = append(missing, name)
			}
		}
		// The six requests' events; the bad key's is not sent to the
		// refusing endpoint (no unauthenticated: true), and is counted
		// as skipped, there and at the usage hook.
		if f := fams["llmproxy_webhook_dlq_total"]; f != nil && sumOf(f) < 6 {
			missing = append(missing, "6 dead letters")
		}
		if f := fams["llmproxy_webhook_skipped_total"]; f != nil && sumOf(f) < 2 {
			missing = append(missing, "2 skipped")
		}
		if f := fams["llmproxy_meter_events_applied_total"]; f != nil && sumOf(f) < 6 {
			missing = append(missing, "6 events applied")
		}
		slices.Sort(missing)
		return len(missing) == 0, fmt.Sprintf("missing %v", missing)
	})
	for name, w := range wants {
		f := fams[name]
		if strings.TrimSpace(f.GetHelp()) == "" {
			t.Errorf("%s has no HELP text", name)
		}
		if f.GetType() != w.typ {
			t.Errorf("%s is a %s, want %s", name, f.GetType(), w.typ)
		}
		for _, m := range f.GetMetric() {
			var got []string
			for _, l := range m.GetLabel() {
				got = append(got, l.GetName())
			}
			for _, l := range w.labels {
				if !slices.Contains(got, l) {
					t.Errorf("%s lacks label %q (has %v)", name, l, got)
				}
			}
		}
	}
	// Values: 6 requests through the backend, one refused; tokens of both types.
	ok200 := 0.0
	for _, m := range fams["llmproxy_requests_total"].GetMetric() {
		if labelOf(m, "status") == "200" && labelOf(m, "path") == "/v1/chat/completions" {
			ok200 += m.GetCounter().GetValue()
		}
	}
	if ok200 != 6 {
		t.Errorf("llmproxy_requests_total{status=200} = %v, want 6", ok200)
	}
	types := map[string]float64{}
	for _, m := range fams["llmproxy_usage_tokens_total"].GetMetric() {
		types[labelOf(m, "type")] = m.GetCounter().GetValue()
	}
	if types["prompt"] <= 0 || types["completion"] != 30 {
		t.Errorf("llmproxy_usage_tokens_total by type = %v, want prompt > 0 and completion 30", types)
	}
	if n := fams["llmproxy_latency_ms"].GetMetric()[0].GetHistogram().GetSampleCount(); n < 6 {
		t.Errorf("llmproxy_latency_ms has %d samples, want ≥ 6", n)
	}
	if sumOf(fams["llmproxy_webhook_retries_total"]) < 1 || sumOf(fams["llmproxy_admission_rejections_total"]) < 1 {
		t.Errorf("retries %v, rejections %v: want ≥ 1 each", sumOf(fams["llmproxy_webhook_retries_total"]), sumOf(fams["llmproxy_admission_rejections_total"]))
	}
	if t.Failed() {
		return
	}

	// /healthz and /readyz on every target.
	rurl, prefix := redisPrefix(t, "ops")
	_, natsURL := natsServer(t)
	dcfg := filepath.Join(dir, "distributed.yaml")
	dlisten := freeAddr(t)
	writeFile(t, dcfg, distributedConfig(dlisten, filepath.Join(dir, "dist"), natsURL, rurl, prefix, mock, flaky.URL))
	targets := map[string]string{}
	for _, target := range []string{"gateway", "meter", "notifier"} {
		a := freeAddr(t)
		start(t, "llmproxy", "serve", "--config", dcfg, "--target", target, "--admin-listen", a)
		targets[target+" admin"] = "http://" + a
	}
	targets["gateway"] = "http://" + dlisten
	for name, base := range targets {
		for _, path := range []string{"/healthz", "/readyz"} {
			eventually(t, 30*time.Second, name+path, func() (bool, string) {
				resp, err := http.Get(base + path)
				if err != nil {
					return false, err.Error()
				}
				resp.Body.Close()
				return resp.StatusCode == 200, resp.Status
			})
		}
	}
	for _, target := range []string{"meter", "notifier"} {
		if _, err := opsFamilies(t, targets[target+" admin"]+"/metrics"); err != nil {
			t.Errorf("%s /metrics: %v", target, err)
		}
	}
}

func sumOf(f *dto.MetricFamily) float64 {
	s := 0.0
	for _, m := range f.GetMetric() {
		s += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return s
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestOpsAccessLog(t *testing.T) {
	mock := startMock(t, "--tokens", "4")
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, opsConfig(listen, admin, filepath.Join(dir, "data"), opsBackend(mock, "mockllm"), "", false, ""))
	p := start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/readyz")

	const bogus = "sk-llmproxy-bogus-secret-9999"
	var gwIDs []string
	for i, c := range []struct {
		key    string
		stream bool
		status int
	}{{keyAlpha, false, 200}, {keyAlpha, true, 200}, {bogus, false, 401}} {
		resp, body := post(t, gw+"/v1/chat/completions", c.key, fmt.Sprintf("ops-log-%d", i), chatBody(i, c.stream, false), nil)
		if resp.StatusCode != c.status {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
		gwIDs = append(gwIDs, resp.Header.Get("X-Request-Id"))
	}
	var lines []map[string]any
	eventually(t, 10*time.Second, "3 access lines", func() (bool, string) {
		lines = nil
		sc := bufio.NewScanner(strings.NewReader(p.out.String()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == "request" {
				lines = append(lines, m)
			}
		}
		return len(lines) == 3, fmt.Sprintf("%d access lines", len(lines))
	})
	time.Sleep(300 * time.Millisecond)
	out := p.out.String()
	for _, s := range []string{keyAlpha, bogus} {
		if strings.Contains(out, s) {
			t.Errorf("the log carries a secret %q:\n%s", s, out)
		}
	}
	ids := map[string]bool{}
	for i, l := range lines {
		for _, f := range []string{"request_id", "key_id", "model", "status", "latency_ms", "ttft_ms"} {
			if _, ok := l[f]; !ok {
				t.Errorf("access line %d lacks %q: %v", i, f, l)
			}
		}
		_, tok := l["tokens"]
		_, pt := l["prompt_tokens"]
		_, ct := l["completion_tokens"]
		if !tok && !(pt && ct) {
			t.Errorf("access line %d has no token counts: %v", i, l)
		}
		id, _ := l["request_id"].(string)
		if id == "" || ids[id] {
			t.Errorf("access line %d: request_id %q empty or repeated", i, id)
		}
		ids[id] = true
	}
	if t.Failed() {
		return
	}
	if lines[0]["key_id"] != "alpha" || lines[0]["model"] != "mock-model" || lines[0]["status"] != float64(200) {
		t.Errorf("first access line: %v", lines[0])
	}
	if lines[1]["completion_tokens"] != float64(4) && lines[1]["tokens"] == nil {
		t.Errorf("stream access line: %v", lines[1])
	}
	if lines[2]["status"] != float64(401) {
		t.Errorf("refused request's line: %v", lines[2])
	}
}

// openStream starts a streamed request; started is closed once its first
// SSE event arrived. It returns the body and the time it ended.
type streamResult struct {
	body []byte
	err  error
	end  time.Time
}

func openStream(client *http.Client, url, key, id string, body []byte, started chan<- struct{}) streamResult {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("X-Request-Id", id)
	resp, err := client.Do(req)
	if err != nil {
		close(started)
		return streamResult{err: err, end: time.Now()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		close(started)
		return streamResult{err: fmt.Errorf("status %d: %s", resp.StatusCode, b), end: time.Now()}
	}
	var buf bytes.Buffer
	chunk := make([]byte, 4096)
	once := false
	for {
		n, err := resp.Body.Read(chunk)
		buf.Write(chunk[:n])
		if !once && bytes.Contains(buf.Bytes(), []byte("\n\n")) {
			once = true
			close(started)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if !once {
				close(started)
			}
			return streamResult{body: buf.Bytes(), err: err, end: time.Now()}
		}
	}
	if !once {
		close(started)
	}
	return streamResult{body: buf.Bytes(), end: time.Now()}
}

func endsWithDone(body []byte) bool {
	return bytes.HasSuffix(bytes.TrimRight(body, "\n"), []byte("data: [DONE]"))
}

func TestOpsGracefulShutdown(t *testing.T) {
	mockAddr := freeAddr(t)
	// 20 tokens 100 ms apart: each stream lasts about 2 s.
	start(t, "mockllm", "--listen", mockAddr, "--tokens", "20", "--gap", "100ms")
	mock := "http://" + mockAddr
	waitHTTP(t, mock+"/health")
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	const drain = 20 * time.Second // server.drain_timeout in opsConfig
	writeFile(t, cfg, opsConfig(listen, admin, filepath.Join(dir, "data"), opsBackend(mock, "mockllm"), "", false, ""))
	p := start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/readyz")

	const n = 50
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	results := make([]streamResult, n)
	var wg sync.WaitGroup
	var startedAll sync.WaitGroup
	for i := 0; i < n; i++ {
		started := make(chan struct{})
		wg.Add(1)
		startedAll.Add(1)
		go func() {
			defer wg.Done()
			results[i] = openStream(client, gw+"/v1/chat/completions", keyAlpha, fmt.Sprintf("drain-%d", i), chatBody(i, true, true), started)
		}()
		go func() { <-started; startedAll.Done() }()
	}
	waitCh := make(chan struct{})
	go func() { startedAll.Wait(); close(waitCh) }()
	select {
	case <-waitCh:
	case <-time.After(30 * time.Second):
		t.Fatal("50 streams did not start within 30s")
	}
	sigAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused once the listener is closed.
	var refusedAt time.Time
	for time.Since(sigAt) < 5*time.Second {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			refusedAt = time.Now()
			break
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
	if refusedAt.IsZero() {
		t.Errorf("new connections still accepted 5s after SIGTERM")
	}
	wg.Wait()
	var last time.Time
	want := tokens{}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("stream %d: %v (got %q)", i, r.err, r.body)
		}
		if !endsWithDone(r.body) {
			t.Fatalf("stream %d did not end with data: [DONE]: %q", i, tail(string(r.body), 300))
		}
		u, count := usageFromSSE(t, r.body)
		if count != 1 || u.completion != 20 {
			t.Fatalf("stream %d: usage %+v in %d chunks, want 20 completion tokens in 1", i, u, count)
		}
		want.prompt += u.prompt
		want.completion += u.completion
		if r.end.After(last) {
			last = r.end
		}
	}
	if d := last.Sub(sigAt); d > drain {
		t.Fatalf("the last stream ended %s after SIGTERM, past the %s drain deadline", d, drain)
	}
	select {
	case <-p.done:
	case <-time.After(drain + 15*time.Second):
		t.Fatal("llmproxy did not exit after SIGTERM")
	}
	if code := p.exitCode(); code != 0 {
		t.Fatalf("llmproxy exited %d after SIGTERM", code)
	}
	t.Logf("listener closed %s after SIGTERM; last stream ended after %s", refusedAt.Sub(sigAt), last.Sub(sigAt))

	// After a restart every one of the 50 requests is in the ledger.
	p.start()
	waitHTTP(t, gw+"/readyz")
	waitLedger(t, cfg, map[string]tokens{"alpha": want}, map[string]int64{"alpha": n})
}

// TestOpsShutdownPastDrain: streams still running when the drain deadline
// passes are cut, and each one's event is still published and counted.
func TestOpsShutdownPastDrain(t *testing.T) {
	// 100 tokens 100 ms apart: each stream would last 10 s.
	mock := startMock(t, "--tokens", "100", "--gap", "100ms")
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	const drain = 2 * time.Second
	writeFile(t, cfg, strings.Replace(opsConfig(listen, admin, filepath.Join(dir, "data"), opsBackend(mock, "mockllm"), "", false, ""),
		"drain_timeout: 20s", "drain_timeout: 2s", 1))
	p := start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/readyz")

	const n = 10
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	var wg, startedAll sync.WaitGroup
	for i := range n {
		started := make(chan struct{})
		wg.Add(1)
		startedAll.Add(1)
		go func() {
			defer wg.Done()
			_ = openStream(client, gw+"/v1/chat/completions", keyAlpha, fmt.Sprintf("cut-%d", i), chatBody(i, true, true), started)
		}()
		go func() { <-started; startedAll.Done() }()
	}
	startedAll.Wait()
	sigAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// While it drains, the admin listener's /readyz says it is going, so
	// that a load balancer probing there stops sending to it.
	eventually(t, drain, "/readyz on the admin listener failing while draining", func() (bool, string) {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 503 && strings.Contains(string(b), "shutting down"), fmt.Sprintf("%d %s", resp.StatusCode, b)
	})
	wg.Wait()
	if d := time.Since(sigAt); d > drain+3*time.Second {
		t.Fatalf("the streams ended %s after SIGTERM; the drain deadline is %s", d, drain)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("llmproxy did not exit after SIGTERM")
	}
	if code := p.exitCode(); code != 0 {
		t.Fatalf("llmproxy exited %d after SIGTERM", code)
	}

	// After a restart the ledger has all ten requests, each billed for
	// what it delivered before the cut.
	p.start()
	waitHTTP(t, gw+"/readyz")
	eventually(t, 60*time.Second, "ten cut streams in the ledger", func() (bool, string) {
		rows, err := usageOf(t, cfg)
		if err != nil {
			return false, err.Error()
		}
		r := rows["alpha"]
		return r.Requests == n && r.CompletionTokens >= n, fmt.Sprintf("%+v", r)
	})
	// The server cut them, not their clients.
	out, err := runCLI(t, "logs", "--config", cfg, "--since", "1h", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("llmproxy logs --json: %v in %q", err, tail(out, 2000))
	}
	cut := 0
	for _, ev := range list {
		if ev["error"] == "server_shutdown" {
			cut++
		}
	}
	if cut != n {
		t.Fatalf("%d of %d events with error server_shutdown: %s", cut, n, tail(out, 2000))
	}
}

func TestOpsReload(t *testing.T) {
	m1, m2 := freeAddr(t), freeAddr(t)
	start(t, "mockllm", "--listen", m1, "--tokens", "25", "--gap", "100ms", "--name", "m1")
	start(t, "mockllm", "--listen", m2, "--tokens", "25", "--gap", "100ms", "--name", "m2")
	waitHTTP(t, "http://"+m1+"/health")
	waitHTTP(t, "http://"+m2+"/health")
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	data := filepath.Join(dir, "data")
	writeFile(t, cfg, opsConfig(listen, admin, data, opsBackend("http://"+m1, "m1"), "", false, ""))
	p := start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/readyz")

	// A keep-alive connection, used before and after the reload.
	var reused atomic.Bool
	keep := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1}}
	keepPost := func(key string) (int, string) {
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused.Store(i.Reused) }}
		ctx := httptrace.WithClientTrace(context.Background(), trace)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, gw+"/v1/chat/completions",
			strings.NewReader(`{"model":"mock-model","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := keep.Do(req)
		if err != nil {
			t.Fatalf("keep-alive request: %v", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Mock-Backend")
	}
	if s, _ := keepPost(keyAlpha); s != 200 {
		t.Fatalf("alpha before reload: %d", s)
	}
	if s, _ := keepPost(keyBeta); s != 401 {
		t.Fatalf("beta before reload: %d, want 401", s)
	}

	// A stream open across the reload (25 tokens × 100 ms).
	started := make(chan struct{})
	streamDone := make(chan streamResult, 1)
	go func() {
		streamDone <- openStream(&http.Client{}, gw+"/v1/chat/completions", keyAlpha, "reload-stream", chatBody(3, true, false), started)
	}()
	<-started

	writeFile(t, cfg, opsConfig(listen, admin, data, opsBackend("http://"+m1, "m1")+opsBackend("http://"+m2, "m2"), "", true, ""))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "new key accepted after SIGHUP", func() (bool, string) {
		s, _ := keepPost(keyBeta)
		return s == 200, fmt.Sprintf("status %d", s)
	})
	backends := map[string]int{}
	for i := 0; i < 8; i++ {
		s, b := keepPost(keyBeta)
		if s != 200 {
			t.Fatalf("beta after reload: %d", s)
		}
		backends[b]++
	}
	if backends["m1"] == 0 || backends["m2"] == 0 {
		t.Errorf("after the reload requests went to %v, want both m1 and m2", backends)
	}
	if !reused.Load() {
		t.Errorf("the keep-alive connection was not reused across the reload")
	}
	r := <-streamDone
	if r.err != nil || !endsWithDone(r.body) {
		t.Fatalf("stream open across the reload: err %v, body %q", r.err, tail(string(r.body), 300))
	}
	if u, _ := usageFromSSE(t, r.body); u != (tokens{}) {
		t.Fatalf("stream that asked for no usage saw usage %+v", u)
	}
	if got := strings.Count(string(r.body), `"content":"tok`); got != 25 {
		t.Fatalf("stream open across the reload got %d of 25 tokens", got)
	}

	// A broken config on SIGHUP keeps the running one.
	writeFile(t, cfg, opsConfig(listen, admin, data, opsBackend("http://"+m1, "m1"), "", false, "no_such_key: 1\n"))
	before := strings.Count(p.out.String(), "reload refused")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "broken config refused", func() (bool, string) {
		return strings.Count(p.out.String(), "reload refused") > before, "no refusal logged"
	})
	for _, k := range []string{keyAlpha, keyBeta} {
		if s, _ := keepPost(k); s != 200 {
			t.Fatalf("after a refused reload key %s…: %d, want 200 (old config kept)", k[:14], s)
		}
	}
	select {
	case <-p.done:
		t.Fatal("llmproxy exited after a broken config")
	default:
	}
}
