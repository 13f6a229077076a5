package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"
)

// binDir holds llmproxy and mockllm, built once for the whole package.
var binDir string

func TestMain(m *testing.M) {
	// A child JetStream server for the meter tests (meter_test.go).
	if spec := os.Getenv(natsdEnv); spec != "" {
		os.Exit(natsdMain(spec))
	}
	dir, err := os.MkdirTemp("", "llmproxy-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, name := range []string{"llmproxy", "mockllm"} {
		cmd := exec.Command("go", "build", "-race", "-o", filepath.Join(dir, name), "github.com/llmproxy/llmproxy/cmd/"+name)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", name, err)
			os.Exit(1)
		}
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a free port.
//
// The port is below the kernel's range for ports it picks itself
// (32768–60999 on Linux), from which every listener on port 0 (an embedded
// nats-server on Port -1, say) takes its own: a port from that range, free
// when checked and closed again, could be taken by another test's listener
// before this test's process binds it. Ports handed out are not handed out
// again to the tests running at once.
func freeAddr(t testing.TB) string {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 10000 {
		nextPort++
		if nextPort < firstPort || nextPort >= firstPort+10000 {
			nextPort = firstPort + rand.IntN(10000)
		}
		if portsGiven[nextPort] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", nextPort))
		if err != nil {
			continue
		}
		ln.Close()
		portsGiven[nextPort] = true
		return fmt.Sprintf("127.0.0.1:%d", nextPort)
	}
	t.Fatal("no free port")
	return ""
}

// firstPort starts the ports freeAddr hands out: 10000–19999.
const firstPort = 10000

var (
	portsMu    sync.Mutex
	nextPort   int
	portsGiven = map[int]bool{}
)

// proc is a child process of the test, stopped at cleanup.
type proc struct {
	t    testing.TB
	name string
	args []string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args}
	p.start()
	t.Cleanup(func() {
		p.stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("--- output of %s %v:\n%s", name, args, tail(p.out.String(), 6000))
		}
	})
	return p
}

func (p *proc) start() {
	p.t.Helper()
	path := p.name // one of ours, from binDir, unless given whole
	if !filepath.IsAbs(path) {
		path = filepath.Join(binDir, path)
	}
	p.cmd = exec.Command(path, p.args...)
	if p.out == nil {
		p.out = &syncBuffer{}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(p.done) }()
}

// stop sends sig and waits for the process to exit.
func (p *proc) stop(sig syscall.Signal) {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exitCode() int { return p.cmd.ProcessState.ExitCode() }

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// waitHTTP polls url until it answers 200.
func waitHTTP(t testing.TB, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not become ready", url)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not reached within %s; last state: %s", what, within, last)
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// runCLI runs llmproxy with args and returns its stdout.
func runCLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "llmproxy"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%v: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

// usageRow is one row of `llmproxy usage --json`.
type usageRow struct {
	KeyID            string `json:"key_id"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	TotalTokens      int64  `json:"total_tokens"`
	Requests         int64  `json:"requests"`
}

func usageOf(t testing.TB, cfgPath string) (map[string]usageRow, error) {
	out, err := runCLI(t, "usage", "--config", cfgPath, "--json")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Usage []usageRow `json:"usage"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("parse %q: %w", out, err)
	}
	m := map[string]usageRow{}
	for _, r := range doc.Usage {
		m[r.KeyID] = r
	}
	return m, nil
}

// natsServer runs a separate JetStream server in the test process,
// standing in for an external NATS deployment.
func natsServer(t testing.TB) (*server.Server, string) {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoSigs: true, NoLog: true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns, ns.ClientURL()
}

// redisURL returns the test Redis; in CI a missing Redis fails the test.
func redisURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("REDIS_URL")
	if u == "" {
		u = "redis://127.0.0.1:6379/15"
	}
	opt, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Redis at %s is required in CI: %v", u, err)
		}
		t.Skipf("Redis at %s unreachable: %v", u, err)
	}
	return u
}

// redisPrefix returns the test Redis's URL and a key prefix of its own for
// one test (name and the time), whose keys are deleted when the test ends.
func redisPrefix(t testing.TB, name string) (url, prefix string) {
	t.Helper()
	url = redisURL(t)
	prefix = fmt.Sprintf("%s%d", name, time.Now().UnixNano())
	t.Cleanup(func() {
		opt, _ := redis.ParseURL(url)
		c := redis.NewClient(opt)
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return url, prefix
}

// startMock starts mockllm with args on a free address, waits until it
// answers and returns its base URL.
func startMock(t testing.TB, args ...string) string {
	t.Helper()
	addr := freeAddr(t)
	start(t, "mockllm", append([]string{"--listen", addr}, args...)...)
	u := "http://" + addr
	waitHTTP(t, u+"/health")
	return u
}

// startReceiver serves a webhookReceiver until the test ends.
func startReceiver(t testing.TB) (*webhookReceiver, *httptest.Server) {
	recv := &webhookReceiver{}
	hook := httptest.NewServer(recv)
	t.Cleanup(hook.Close)
	return recv, hook
}

// webhookReceiver collects the payloads POSTed to it, by event id.
type webhookReceiver struct {
	mu       sync.Mutex
	payloads map[string]map[string]any
	posts    int
}

func (w *webhookReceiver) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		http.Error(rw, "bad json", 400)
		return
	}
	w.mu.Lock()
	if w.payloads == nil {
		w.payloads = map[string]map[string]any{}
	}
	// Tests name their requests with X-Request-Id, which the event keeps
	// as client_request_id (its request_id is always the gateway's own).
	id, _ := m["client_request_id"].(string)
	if id == "" {
		id = r.Header.Get("X-LLMProxy-Event-Id")
	}
	w.payloads[id] = m
	w.posts++
	w.mu.Unlock()
	rw.WriteHeader(204)
}

func (w *webhookReceiver) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.payloads)
}

func (w *webhookReceiver) snapshot() map[string]map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]map[string]any, len(w.payloads))
	for k, v := range w.payloads {
		out[k] = v
	}
	return out
}

// sseEvents splits an SSE body into its events.
func sseEvents(body []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var cur strings.Builder
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
