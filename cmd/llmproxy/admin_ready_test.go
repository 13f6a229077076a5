package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// TestAdminReadyzSeesBackends: with every backend down, the admin
// listener's /readyz refuses as the gateway's own does.
func TestAdminReadyzSeesBackends(t *testing.T) {
	dir := t.TempDir()
	listen, admin, dead := freeAddr(t), freeAddr(t), freeAddr(t)
	path := filepath.Join(dir, "llmproxy.yaml")
	yaml := fmt.Sprintf(`listen: %q
data_dir: %q
admin: { listen: %q, token: admin-token-0123456789 }
backends:
  - url: "http://%s"
health_check: { path: /health, interval: 200ms, timeout: 100ms, failure_threshold: 1 }
logging: { level: warn }
`, listen, filepath.Join(dir, "data"), admin, dead)
	serveAll(t, path, yaml)
	status := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, 20*time.Second, "the gateway's /readyz refusing", func() (bool, string) {
		code, body := status("http://" + listen + "/readyz")
		return code == http.StatusServiceUnavailable, body
	})
	if code, body := status("http://" + admin + "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("admin /readyz = %d %q with every backend down, want 503", code, body)
	}
}

// TestAdminClosesIdleConnections: the admin listener closes a keep-alive
// connection left idle for server.idle_timeout, as the API listener does;
// it kept them for good, so anyone who could reach it could hold a
// worker's descriptors.
func TestAdminClosesIdleConnections(t *testing.T) {
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	path := filepath.Join(dir, "llmproxy.yaml")
	yaml := fmt.Sprintf(`listen: %q
data_dir: %q
admin: { listen: %q, token: admin-token-0123456789 }
server: { idle_timeout: 500ms }
backends:
  - url: "http://127.0.0.1:9"
logging: { level: warn }
`, listen, filepath.Join(dir, "data"), admin)
	serveAll(t, path, yaml)
	eventually(t, 20*time.Second, "the admin listener", func() (bool, string) {
		resp, err := http.Get("http://" + admin + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return true, ""
	})
	conn, err := net.Dial("tcp", admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("the idle connection sent more")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the idle connection was still open after %v", time.Since(start))
	}
}

// TestReadyWithinAnswersWhenTheStoreDoesNot: a readiness check whose store
// does not answer, and whose client does not heed the context, still fails
// once its bound has passed, naming the store it was asking and what the
// stores asked before it said; a check that answers names every store that
// failed, not only the first.
func TestReadyWithinAnswersWhenTheStoreDoesNot(t *testing.T) {
	stuck := make(chan struct{})
	defer close(stuck)
	check := readyWithin(50*time.Millisecond, func(ctx context.Context, p *readyProgress) {
		readyOf("NATS", func(context.Context) error { return errors.New("nats: not connected") })(ctx, p)
		p.asking("Redis")
		<-stuck // a frozen server's socket: no answer, whatever the context says
	})
	if err := check(context.Background()); err == nil || err.Error() != "nats: not connected; no answer within 50ms from Redis" {
		t.Fatalf("check = %v, want it to say NATS failed and Redis did not answer within its bound", err)
	}
	check = readyWithin(time.Second, func(ctx context.Context, p *readyProgress) {
		readyOf("NATS", func(context.Context) error { return errors.New("nats: not connected") })(ctx, p)
		readyOf("Redis", func(context.Context) error { return errors.New("redis: down") })(ctx, p)
		readyOf("PostgreSQL", func(context.Context) error { return nil })(ctx, p)
	})
	if err := check(context.Background()); err == nil || err.Error() != "nats: not connected; redis: down" {
		t.Fatalf("a check that answers: %v, want every store's error", err)
	}
	if err := readyWithin(time.Second, readyOf("Redis", func(context.Context) error { return nil }))(context.Background()); err != nil {
		t.Fatalf("a ready store: %v", err)
	}
}
