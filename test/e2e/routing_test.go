package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The routing tests run the single binary with auth off in front of several
// mockllm backends, each started with --name so that every reply says, in
// its X-Mock-Backend header, which backend served it.

// routingMock is one mockllm process.
type routingMock struct {
	name string
	addr string
	proc *proc
}

func (m *routingMock) url() string { return "http://" + m.addr }

func startRoutingMock(t *testing.T, name string, flags ...string) *routingMock {
	t.Helper()
	addr := freeAddr(t)
	args := append([]string{"--listen", addr, "--name", name}, flags...)
	p := start(t, "mockllm", args...)
	waitHTTP(t, "http://"+addr+"/health")
	return &routingMock{name: name, addr: addr, proc: p}
}

// routingClient is shared by the routing tests: enough idle connections
// for the concurrent loads, generous timeouts for a loaded machine.
var routingClient = &http.Client{
	Timeout: 60 * time.Second,
	Transport: &http.Transport{
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     30 * time.Second,
	},
}

// startRoutingGateway writes a single-binary config (auth off) with the
// given backends and routing sections and serves it; it returns the
// gateway's base URL once /readyz answers 200 (after the first health
// round).
func startRoutingGateway(t *testing.T, backends, rest string) string {
	t.Helper()
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, fmt.Sprintf(`
listen: %q
data_dir: %q
auth: { enabled: false }
logging: { level: warn }
backends:
%s
%s
`, listen, filepath.Join(dir, "data"), backends, rest))
	start(t, "llmproxy", "serve", "--config", cfg)
	gw := "http://" + listen
	waitHTTP(t, gw+"/readyz")
	return gw
}

func routingBackendsYAML(ms ...*routingMock) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "  - { name: %s, url: %q }\n", m.name, m.url())
	}
	return b.String()
}

func routingBody(model string, stream bool) []byte {
	m := map[string]any{
		"model":    model,
		"messages": []map[string]string{{"role": "user", "content": "route me please"}},
	}
	if stream {
		m["stream"] = true
	}
	b, _ := json.Marshal(m)
	return b
}

// routingResult is one request's outcome as the client saw it.
type routingResult struct {
	sent, done time.Time
	status     int
	backend    string
	err        string
}

// routingSend posts one chat request and reads the whole reply. It never
// fails the test itself (it may run on a worker goroutine).
func routingSend(gw, model string, stream bool, hdr map[string]string) routingResult {
	r := routingResult{sent: time.Now()}
	req, _ := http.NewRequest(http.MethodPost, gw+"/v1/chat/completions", bytes.NewReader(routingBody(model, stream)))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := routingClient.Do(req)
	if err != nil {
		r.done, r.err = time.Now(), err.Error()
		return r
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r.done, r.status, r.backend = time.Now(), resp.StatusCode, resp.Header.Get("X-Mock-Backend")
	switch {
	case err != nil:
		r.err = "reading the body: " + err.Error()
	case resp.StatusCode != 200:
		r.err = fmt.Sprintf("status %d: %s", resp.StatusCode, tail(string(body), 300))
	case stream && (!bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) || bytes.Contains(body, []byte("backend_stream_error"))):
		r.err = "stream did not end cleanly: " + tail(string(body), 300)
	case !stream && !bytes.Contains(body, []byte(`"usage"`)):
		r.err = "reply without usage: " + tail(string(body), 300)
	}
	return r
}

// routingProm returns the value of the first sample named metric whose
// labels contain every labels substring, from a Prometheus text body.
func routingProm(body, metric string, labels ...string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric) {
			continue
		}
		rest := line[len(metric):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err == nil {
			return v, true
		}
	}
	return 0, false
}

func routingGet(url string) (string, error) {
	resp, err := routingClient.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// routingReadyz returns each backend's state as /readyz reports it.
func routingReadyz(gw string) (map[string]string, error) {
	body, err := routingGet(gw + "/readyz")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Backends []struct{ Name, State string } `json:"backends"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		return nil, fmt.Errorf("readyz %q: %w", body, err)
	}
	out := map[string]string{}
	for _, b := range doc.Backends {
		out[b.Name] = b.State
	}
	return out, nil
}

func routingCount(rs []routingResult) map[string]int {
	c := map[string]int{}
	for _, r := range rs {
		c[r.backend]++
	}
	return c
}

// TestRoutingFailover: 200 non-stream requests/s for 10 s over three
// backends; b2 is SIGKILLed at 3 s and restarted on the same port at 6 s.
// No client sees an error, b2 is ejected within 1 s, and it serves again
// after its return.
func TestRoutingFailover(t *testing.T) {
	b1 := startRoutingMock(t, "b1", "--tokens", "4")
	b2 := startRoutingMock(t, "b2", "--tokens", "4")
	b3 := startRoutingMock(t, "b3", "--tokens", "4")
	gw := startRoutingGateway(t, routingBackendsYAML(b1, b2, b3), `
health_check: { path: /health, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1, failure_threshold: 1, cooldown: 1s }
routing:
  load_balance_strategy: round_robin
  retry: { enabled: true, max_retries: 2, initial_wait: 10ms }
`)

	const (
		rate      = 200
		duration  = 10 * time.Second
		killAt    = 3 * time.Second
		restartAt = 6 * time.Second
		workers   = 48
	)
	total := int(duration.Seconds()) * rate
	interval := time.Second / rate
	results := make([]routingResult, total)
	jobs := make(chan int, total)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				results[i] = routingSend(gw, "mock-model", false, nil)
			}
		})
	}

	// Watch the gateway while the load runs: /readyz's state of b2 and
	// llmproxy_backend_ejections_total{backend="b2"}. With
	// failure_threshold 1 every failed try at b2 ejects it again, so the
	// counter's last rise is the last time a request was sent to b2.
	type sample struct {
		at        time.Time
		state     string
		ejections float64
	}
	var samples []sample
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(25 * time.Millisecond):
			}
			s := sample{at: time.Now(), ejections: -1}
			if st, err := routingReadyz(gw); err == nil {
				s.state = st["b2"]
			}
			if m, err := routingGet(gw + "/metrics"); err == nil {
				if v, ok := routingProm(m, "llmproxy_backend_ejections_total", `backend="b2"`); ok {
					s.ejections = v
				}
			}
			samples = append(samples, s)
		}
	}()

	t0 := time.Now()
	var killedAt, restartedAt time.Time
	killed, restarted := false, false
	for i := 0; i < total; i++ {
		due := t0.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		now := time.Since(t0)
		if !killed && now >= killAt {
			b2.proc.stop(syscall.SIGKILL)
			killedAt, killed = time.Now(), true
		}
		if !restarted && now >= restartAt {
			b2.proc.start()
			restartedAt, restarted = time.Now(), true
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(t0)
	close(stopWatch)
	<-watchDone

	// Zero client errors.
	var errs []string
	for i, r := range results {
		if r.err != "" {
			errs = append(errs, fmt.Sprintf("#%d at +%s: %s", i, r.sent.Sub(t0).Round(time.Millisecond), r.err))
		}
	}
	t.Logf("%d requests in %s (%.0f/s)", total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed; first: %s", len(errs), total, strings.Join(errs[:min(len(errs), 10)], "\n"))
	}

	// Distribution per phase.
	var before, down, back []routingResult
	for _, r := range results {
		switch {
		case r.done.Before(killedAt):
			before = append(before, r)
		case r.sent.After(killedAt) && r.done.Before(restartedAt):
			down = append(down, r)
		case r.sent.After(restartedAt):
			back = append(back, r)
		}
	}
	t.Logf("served before the kill: %v; while b2 was down: %v; after b2's restart: %v", routingCount(before), routingCount(down), routingCount(back))
	if c := routingCount(before); c["b1"] == 0 || c["b2"] == 0 || c["b3"] == 0 {
		t.Errorf("before the kill every backend should serve: %v", c)
	}
	for _, r := range down {
		if r.backend == "b2" {
			t.Errorf("a request sent %s after the kill was answered by b2", r.sent.Sub(killedAt))
			break
		}
	}

	// Ejection: from the kill, b2 must leave /readyz's healthy state and
	// stop receiving tries within 1 s, and stay out until its restart.
	var firstOut, lastTry time.Time
	var ejAtKill, ejLast float64 = -1, -1
	for _, s := range samples {
		if s.at.Before(killedAt) {
			ejAtKill = s.ejections
			continue
		}
		if !s.at.Before(restartedAt) {
			break
		}
		if firstOut.IsZero() && s.state != "healthy" && s.state != "" {
			firstOut = s.at
		}
		if s.ejections != ejLast {
			if ejLast >= 0 {
				lastTry = s.at
			}
			ejLast = s.ejections
		}
	}
	if ejLast > ejAtKill && ejAtKill >= 0 && lastTry.IsZero() {
		// the counter rose only before the first sample after the kill
		lastTry = killedAt
	}
	t.Logf("b2 killed at +%s, restarted at +%s; /readyz shows b2 not healthy %s after the kill; failed tries at b2 after the kill: %.0f, the last one seen %s after the kill",
		killedAt.Sub(t0).Round(time.Millisecond), restartedAt.Sub(t0).Round(time.Millisecond),
		firstOut.Sub(killedAt).Round(time.Millisecond), ejLast-ejAtKill, lastTry.Sub(killedAt).Round(time.Millisecond))
	if firstOut.IsZero() || firstOut.Sub(killedAt) > time.Second {
		t.Errorf("/readyz did not show b2 out within 1 s of the kill (first seen out %v after)", firstOut.Sub(killedAt))
	}
	if !lastTry.IsZero() && lastTry.Sub(killedAt) > time.Second {
		t.Errorf("requests were still sent to b2 %s after the kill (ejection must hold from within 1 s)", lastTry.Sub(killedAt))
	}
	for _, s := range samples {
		if s.at.After(killedAt.Add(time.Second)) && s.at.Before(restartedAt) && s.state == "healthy" {
			t.Errorf("/readyz showed b2 healthy again %s after the kill, while it was down", s.at.Sub(killedAt))
			break
		}
	}

	// Back: b2 serves again after its restart.
	c := routingCount(back)
	if c["b2"] < len(back)/10 {
		t.Errorf("after its restart b2 served %d of %d requests, want a fair share: %v", c["b2"], len(back), c)
	}
	var firstBack time.Time
	for _, r := range back {
		if r.backend == "b2" && (firstBack.IsZero() || r.done.Before(firstBack)) {
			firstBack = r.done
		}
	}
	if !firstBack.IsZero() {
		t.Logf("b2 served again %s after its restart", firstBack.Sub(restartedAt).Round(time.Millisecond))
	}
}

func routingSetLoad(t *testing.T, m *routingMock, waiting int) {
	t.Helper()
	resp, err := routingClient.Post(m.url()+"/mock/load", "application/json", strings.NewReader(fmt.Sprintf(`{"waiting":%d}`, waiting)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("/mock/load on %s: %d", m.name, resp.StatusCode)
	}
}

// TestRoutingLeastLoad: the backend whose /metrics reports the fewest
// waiting requests takes most of the traffic.
func TestRoutingLeastLoad(t *testing.T) {
	b1 := startRoutingMock(t, "b1", "--tokens", "2")
	b2 := startRoutingMock(t, "b2", "--tokens", "2")
	b3 := startRoutingMock(t, "b3", "--tokens", "2")
	routingSetLoad(t, b1, 10)
	routingSetLoad(t, b2, 0)
	routingSetLoad(t, b3, 10)
	gw := startRoutingGateway(t, routingBackendsYAML(b1, b2, b3), `
health_check: { path: /health, interval: 200ms, timeout: 1s }
routing: { load_balance_strategy: least_load }
`)
	var rs []routingResult
	for range 100 {
		r := routingSend(gw, "mock-model", false, nil)
		if r.err != "" {
			t.Fatal(r.err)
		}
		rs = append(rs, r)
	}
	c := routingCount(rs)
	t.Logf("least_load with waiting 10/0/10: %v", c)
	if c["b2"] <= 60 {
		t.Fatalf("b2 (fewest waiting) served %d of 100, want > 60: %v", c["b2"], c)
	}
}

// TestRoutingLeastConnections: three backends, b3 ten times slower, 60
// streaming clients. Least connections keeps the in-flight counts level —
// the slow backend holds about as many streams as each fast one instead of
// piling up — so the fast backends serve far more requests.
//
// Criterion, checked on two views sampled every 100 ms once warmed: the
// gateway's own counters (llmproxy_backend_inflight, one /metrics scrape)
// and the backends' mock_requests_inflight (the three scraped at once).
//   - No pile-up, both views: at every sample no backend holds more than a
//     third of the clients plus 3 (≤ 23 of 60 streams). At most 60 streams
//     are in flight and a new one goes to the lowest count, so a backend
//     rises above 20 only by picks racing between reading the counts and
//     acquiring — a handful.
//   - Level, gateway view: the spread max − min averages ≤ 3. One sample
//     may dip on a fast backend when several of its short streams end
//     together and their clients have not sent the next request yet
//     (client think time, not a choice of the gateway). The backends' view
//     is not held to this: on a loaded machine a fast backend's stream has
//     ended in the mock while the gateway is still relaying its last bytes,
//     so fast backends read low there; that lag is reported, not asserted.
//
// Without working least connections (a request released at its headers,
// or never) the slow backend holds about 10× the streams of a fast one,
// about 50 of the 60.
func TestRoutingLeastConnections(t *testing.T) {
	const tokens = "10"
	b1 := startRoutingMock(t, "b1", "--tokens", tokens, "--gap", "20ms")
	b2 := startRoutingMock(t, "b2", "--tokens", tokens, "--gap", "20ms")
	b3 := startRoutingMock(t, "b3", "--tokens", tokens, "--gap", "200ms")
	gw := startRoutingGateway(t, routingBackendsYAML(b1, b2, b3), `
health_check: { path: /health, interval: 1s, timeout: 1s }
routing: { load_balance_strategy: least_connections }
`)
	mocks := []*routingMock{b1, b2, b3}

	const clients = 60
	const runFor = 5 * time.Second
	const warm = 1500 * time.Millisecond
	stop := make(chan struct{})
	var mu sync.Mutex
	var errs []string
	served := map[string]int{}
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			// Staggered starts, so that the slow backend's streams do not
			// begin, and end, in one cohort.
			time.Sleep(time.Duration(i) * 15 * time.Millisecond)
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := routingSend(gw, "mock-model", true, nil)
				mu.Lock()
				if r.err != "" {
					errs = append(errs, r.err)
				} else {
					served[r.backend]++
				}
				mu.Unlock()
			}
		})
	}

	t0 := time.Now()
	type sample struct {
		at       time.Duration
		gateway  [3]float64
		backends [3]float64
	}
	var samples []sample
	afterWarm := 0
	// Run for runFor, and on a loaded machine (slow scrapes) until enough
	// samples after warm-up were taken.
	for time.Since(t0) < runFor || (afterWarm < 15 && time.Since(t0) < 45*time.Second) {
		time.Sleep(100 * time.Millisecond)
		s := sample{at: time.Since(t0)}
		m, err := routingGet(gw + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range mocks {
			v, ok := routingProm(m, "llmproxy_backend_inflight", `backend="`+b.name+`"`)
			if !ok {
				t.Fatalf("no llmproxy_backend_inflight for %s", b.name)
			}
			s.gateway[i] = v
		}
		// The three backends are scraped at the same moment.
		var sw sync.WaitGroup
		var scrapeErr [3]error
		for i, b := range mocks {
			sw.Go(func() {
				mm, err := routingGet(b.url() + "/metrics")
				v, ok := routingProm(mm, "mock_requests_inflight")
				if err == nil && !ok {
					err = fmt.Errorf("no mock_requests_inflight from %s", b.name)
				}
				s.backends[i], scrapeErr[i] = v, err
			})
		}
		sw.Wait()
		for _, err := range scrapeErr {
			if err != nil {
				t.Fatal(err)
			}
		}
		samples = append(samples, s)
		if s.at >= warm {
			afterWarm++
		}
	}
	close(stop)
	wg.Wait()

	spread := func(v [3]float64) float64 {
		return max(v[0], v[1], v[2]) - min(v[0], v[1], v[2])
	}
	var worstGW, worstBE, sumGW, sumBE float64
	n := 0
	var lines []string
	for _, s := range samples {
		lines = append(lines, fmt.Sprintf("+%s gw %v mocks %v", s.at.Round(10*time.Millisecond), s.gateway, s.backends))
		if s.at < warm {
			continue
		}
		n++
		worstGW = max(worstGW, s.gateway[0], s.gateway[1], s.gateway[2])
		worstBE = max(worstBE, s.backends[0], s.backends[1], s.backends[2])
		sumGW += spread(s.gateway)
		sumBE += spread(s.backends)
	}
	totals := map[string]float64{}
	for _, b := range mocks {
		mm, err := routingGet(b.url() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		totals[b.name], _ = routingProm(mm, "mock_requests_total")
	}
	meanGW, meanBE := sumGW/float64(max(n, 1)), sumBE/float64(max(n, 1))
	t.Logf("%d samples after warm-up: most streams on one backend %.0f at the gateway, %.0f at the backends; mean spread %.2f at the gateway, %.2f at the backends; requests served %v (client view %v)",
		n, worstGW, worstBE, meanGW, meanBE, totals, served)
	if len(errs) > 0 {
		t.Errorf("%d streams failed; first: %s", len(errs), errs[0])
	}
	if n < 10 {
		t.Fatalf("only %d samples after warm-up", n)
	}
	if limit := float64(clients/3 + 3); worstGW > limit || worstBE > limit || meanGW > 3 {
		t.Errorf("in-flight counts not balanced (want ≤ %.0f on any backend at every sample, gateway spread ≤ 3 on average):\n%s", limit, strings.Join(lines, "\n"))
	}
	if totals["b1"] < 3*totals["b3"] || totals["b2"] < 3*totals["b3"] {
		t.Errorf("the fast backends should serve several times the slow one's requests: %v", totals)
	}
}

// TestRoutingWeighted: weights 5/3/2 over 1,000 sequential requests.
func TestRoutingWeighted(t *testing.T) {
	b1 := startRoutingMock(t, "b1", "--tokens", "1")
	b2 := startRoutingMock(t, "b2", "--tokens", "1")
	b3 := startRoutingMock(t, "b3", "--tokens", "1")
	gw := startRoutingGateway(t, fmt.Sprintf(`  - { name: b1, url: %q, weight: 5 }
  - { name: b2, url: %q, weight: 3 }
  - { name: b3, url: %q, weight: 2 }
`, b1.url(), b2.url(), b3.url()), `
health_check: { path: /health, interval: 1s }
routing: { load_balance_strategy: weighted }
`)
	const n = 1000
	var rs []routingResult
	for range n {
		r := routingSend(gw, "mock-model", false, nil)
		if r.err != "" {
			t.Fatal(r.err)
		}
		rs = append(rs, r)
	}
	c := routingCount(rs)
	t.Logf("weighted 5/3/2 over %d requests: %v", n, c)
	for name, w := range map[string]float64{"b1": 0.5, "b2": 0.3, "b3": 0.2} {
		share := float64(c[name]) / n
		if share < w-0.02 || share > w+0.02 {
			t.Errorf("%s served %.1f%%, want %.0f%% ± 2: %v", name, share*100, w*100, c)
		}
	}
}

// TestRoutingConfigCheck: config check rejects an unknown strategy and a
// fallback entry that names no backend, naming the key and the line.
func TestRoutingConfigCheck(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, routing string
		key           string
		line          int
	}{
		{"unknown strategy", `routing:
  load_balance_strategy: fastest_first
`, "routing.load_balance_strategy", 8},
		{"fallback to no backend", `routing:
  fallback:
    - primary: http://127.0.0.1:9101
      fallback: [http://127.0.0.1:9999]
`, "routing.fallback[0].fallback[0]", 10},
		{"fallback from no backend", `routing:
  fallback:
    - primary: nowhere
      fallback: [b2]
`, "routing.fallback[0].primary", 9},
	}
	for i, c := range cases {
		cfg := filepath.Join(dir, fmt.Sprintf("c%d.yaml", i))
		// Line 1 is "data_dir"; the routing section starts on line 7.
		writeFile(t, cfg, fmt.Sprintf(`data_dir: %q
auth: { enabled: false }
backends:
  - { name: b1, url: "http://127.0.0.1:9101" }
  - { name: b2, url: "http://127.0.0.1:9102" }
# routing
%s`, filepath.Join(dir, "data"), c.routing))
		out, err := runCLI(t, "config", "check", cfg)
		if err == nil {
			t.Errorf("%s: config check accepted it: %s", c.name, out)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "exit status 1:") {
			t.Errorf("%s: want exit status 1, got %s", c.name, msg)
		}
		want := fmt.Sprintf("%s:%d: key %s", cfg, c.line, c.key)
		if !strings.Contains(msg, want) {
			t.Errorf("%s: the error should name the key and line (%q):\n%s", c.name, want, msg)
		}
		t.Logf("%s: %s", c.name, strings.TrimSpace(strings.TrimPrefix(msg, "exit status 1:")))
	}
}

// TestRoutingCloseAfterStream: a backend that closes its connection after
// every stream, as llama.cpp's server does, fails no request — with
// retries off, so none is hidden.
func TestRoutingCloseAfterStream(t *testing.T) {
	b := startRoutingMock(t, "llama", "--tokens", "3", "--close-after-stream")
	gw := startRoutingGateway(t, routingBackendsYAML(b), `
health_check: { path: /health, interval: 1s }
routing: { retry: { enabled: false } }
`)
	var errs []string
	for i := range 200 {
		r := routingSend(gw, "mock-model", true, nil)
		if r.err != "" {
			errs = append(errs, fmt.Sprintf("#%d: %s", i, r.err))
		}
		// Every fourth request is a plain one in between, reusing
		// whatever connection the transport kept.
		if i%4 == 3 {
			if r := routingSend(gw, "mock-model", false, nil); r.err != "" {
				errs = append(errs, fmt.Sprintf("#%d (non-stream): %s", i, r.err))
			}
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d failures over 200 streams; first: %s", len(errs), strings.Join(errs[:min(5, len(errs))], "\n"))
	}
	m, err := routingGet(b.url() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := routingProm(m, "mock_requests_total"); v != 250 {
		t.Fatalf("the backend saw %.0f requests, want 250 (200 streams + 50 plain)", v)
	}
}

var routingModelNotFound = regexp.MustCompile(`"code"\s*:\s*"model_not_found"`)

// TestRoutingModels: a backend with models only receives those models; a
// model no backend serves is a 404 model_not_found.
func TestRoutingModels(t *testing.T) {
	a := startRoutingMock(t, "A", "--tokens", "2")
	b := startRoutingMock(t, "B", "--tokens", "2")
	gw := startRoutingGateway(t, fmt.Sprintf(`  - { name: A, url: %q, models: [m-a] }
  - { name: B, url: %q, models: [m-b] }
`, a.url(), b.url()), `
health_check: { path: /health, interval: 1s }
`)
	for _, c := range []struct{ model, want string }{{"m-a", "A"}, {"m-b", "B"}} {
		seen := map[string]int{}
		for _, stream := range []bool{false, true} {
			for range 10 {
				r := routingSend(gw, c.model, stream, nil)
				if r.err != "" {
					t.Fatalf("%s: %s", c.model, r.err)
				}
				seen[r.backend]++
			}
		}
		if len(seen) != 1 || seen[c.want] != 20 {
			t.Errorf("model %s should reach only %s: %v", c.model, c.want, seen)
		}
	}
	resp, body := post(t, gw+"/v1/chat/completions", "", "", routingBody("m-x", false), nil)
	if resp.StatusCode != 404 || !routingModelNotFound.Match(body) {
		t.Fatalf("m-x: want 404 model_not_found, got %d %s", resp.StatusCode, body)
	}
	var names []string
	for _, m := range []*routingMock{a, b} {
		mm, err := routingGet(m.url() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		v, _ := routingProm(mm, "mock_requests_total")
		names = append(names, fmt.Sprintf("%s=%.0f", m.name, v))
		if v != 20 {
			t.Errorf("%s received %.0f inference requests, want 20", m.name, v)
		}
	}
	sort.Strings(names)
	t.Logf("requests per backend: %v; m-x → %d %s", names, resp.StatusCode, bytes.TrimSpace(body))
}

// TestRoutingClientLeavingIsNoBackendFailure: a client that gives up while
// the backend is still thinking is not the backend's failure. With
// failure_threshold 1, counting it as one would eject a healthy backend
// for the whole cooldown and turn every other client away.
func TestRoutingClientLeavingIsNoBackendFailure(t *testing.T) {
	b := startRoutingMock(t, "b1", "--tokens", "2", "--ttft", "2s")
	gw := startRoutingGateway(t, routingBackendsYAML(b), `
health_check: { path: /health, interval: 200ms, failure_threshold: 1, cooldown: 30s }
routing: { retry: { enabled: true, max_retries: 2, initial_wait: 10ms } }
`)
	impatient := &http.Client{Timeout: 200 * time.Millisecond}
	for range 3 {
		req, _ := http.NewRequest(http.MethodPost, gw+"/v1/chat/completions", bytes.NewReader(routingBody("mock-model", false)))
		req.Header.Set("Content-Type", "application/json")
		if resp, err := impatient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("the request should have timed out at the client, got %d", resp.StatusCode)
		}
	}
	// The mock counts the cancelled requests once the gateway has
	// cancelled them; by then the gateway has reported the try.
	eventually(t, 10*time.Second, "the backend sees the clients leave", func() (bool, string) {
		m, err := routingGet(b.url() + "/metrics")
		if err != nil {
			return false, err.Error()
		}
		v, _ := routingProm(m, "mock_cancelled_total")
		return v == 3, fmt.Sprintf("mock_cancelled_total %.0f", v)
	})
	states, err := routingReadyz(gw)
	if err != nil {
		t.Fatal(err)
	}
	r := routingSend(gw, "mock-model", false, map[string]string{"X-Mock-Ttft": "0s"})
	t.Logf("after 3 clients left: /readyz %v; next request: %d %s", states, r.status, r.err)
	if states["b1"] != "healthy" {
		t.Errorf("clients leaving ejected the backend: /readyz says %q", states["b1"])
	}
	if r.err != "" {
		t.Errorf("a patient client after them failed: %s", r.err)
	}
}

// silentCloser is an engine that, like llama.cpp's server, closes the
// connection a moment after each stream without announcing it with
// Connection: close, so the gateway's transport may already have put the
// connection back in its idle pool, or taken it for the next request.
// It answers /health on a kept-alive connection.
func silentCloser(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var streams atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if req.URL.Path == "/health" {
						_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						continue
					}
					n := streams.Add(1)
					var body strings.Builder
					fmt.Fprintf(&body, "data: {\"id\":\"s%d\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n", n)
					body.WriteString("data: {\"id\":\"s\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n")
					body.WriteString("data: [DONE]\n\n")
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", body.Len(), body.String())
					time.Sleep(time.Millisecond)
					return
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String(), &streams
}

// TestRoutingSilentCloseAfterStream: the same as TestRoutingCloseAfterStream
// with a backend that does not announce the close; 4 clients × 100
// streams. Retries are off: a request that meets a connection the backend
// has just closed must be resent by the gateway's transport, not counted
// as a failed try (which would also eject the backend).
func TestRoutingSilentCloseAfterStream(t *testing.T) {
	url, streams := silentCloser(t)
	gw := startRoutingGateway(t, fmt.Sprintf("  - { name: llama, url: %q }\n", url), `
health_check: { path: /health, interval: 1s }
routing: { retry: { enabled: false } }
`)
	var mu sync.Mutex
	var errs []string
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				if r := routingSend(gw, "mock-model", true, nil); r.err != "" {
					mu.Lock()
					errs = append(errs, r.err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	t.Logf("400 streams, %d failed; the backend answered %d streams", len(errs), streams.Load())
	if len(errs) > 0 {
		t.Fatalf("%d of 400 streams failed; first: %s", len(errs), strings.Join(errs[:min(3, len(errs))], "\n"))
	}
}

// TestRoutingFallbackKeepsModels: a fallback chain does not carry a request
// to a backend that does not serve its model. A (models [m-a, m-b], down)
// falls back to B (models [m-b]); a request for m-a must not reach B. (A
// standby that serves none of its primary's models is a config error.)
func TestRoutingFallbackKeepsModels(t *testing.T) {
	downA := "http://" + freeAddr(t) // nothing listens there
	b := startRoutingMock(t, "B", "--tokens", "2")
	gw := startRoutingGateway(t, fmt.Sprintf(`  - { name: A, url: %q, models: [m-a, m-b] }
  - { name: B, url: %q, models: [m-b] }
`, downA, b.url()), `
routing:
  retry: { enabled: true, max_retries: 2, initial_wait: 10ms }
  fallback:
    - { primary: A, fallback: [B] }
`)
	r := routingSend(gw, "m-a", false, nil)
	t.Logf("m-a with A down: status %d, served by %q", r.status, r.backend)
	if r.backend == "B" {
		t.Errorf("a request for m-a fell back to B, which serves only m-b")
	}
	if r := routingSend(gw, "m-b", false, nil); r.err != "" || r.backend != "B" {
		t.Errorf("m-b: %s (backend %q)", r.err, r.backend)
	}
}
