package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/services/gateway"
)

// TestReloadNamesRestartOnlyKeys: a SIGHUP whose file changes what a
// reload does not apply (here listen and a webhook's url) reloads the rest
// and warns, naming those keys; one that changes only what reloads (a key,
// a limit) does not warn. admin.listen given by --admin-listen is not a
// change.
func TestReloadNamesRestartOnlyKeys(t *testing.T) {
	const base = `listen: "127.0.0.1:18000"
admin: { listen: "127.0.0.1:18001", token: t }
backends: [{ url: "http://127.0.0.1:9" }]
webhooks: [{ name: audit, url: "https://audit.internal/a" }]
api_keys: [{ key: sk-one, id: one }]
`
	cases := []struct {
		name string
		file string
		want []string // keys named in the warning; nil: no warning
	}{
		{"only reloadable keys changed", strings.Replace(base, "sk-one, id: one }]", "sk-two, id: two }]\nrate_limit: { per_key: { max_concurrent: 2 } }", 1), nil},
		{"listen and a webhook changed", strings.NewReplacer(`127.0.0.1:18000`, `127.0.0.1:18002`, `audit.internal/a`, `audit.internal/b`).Replace(base), []string{"listen", "webhooks"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			logBuf, _ := reloadTo(t, base, c.file, "127.0.0.1:19999") // as --admin-listen does

			var warned []string
			for _, line := range strings.Split(strings.TrimSpace(logBuf.String()), "\n") {
				var rec struct {
					Level string   `json:"level"`
					Msg   string   `json:"msg"`
					Keys  []string `json:"keys"`
				}
				if json.Unmarshal([]byte(line), &rec) == nil && rec.Level != "INFO" {
					if !strings.Contains(rec.Msg, "not reloaded") {
						t.Fatalf("unexpected log line: %s", line)
					}
					warned = rec.Keys
				}
			}
			if !slices.Equal(warned, c.want) {
				t.Errorf("warned of %v, want %v\nlog:\n%s", warned, c.want, logBuf.String())
			}
		})
	}
}

// TestSIGHUPKeyPeriodsInAdminUsage: after a SIGHUP that adds a key with
// its own quota_reset_period, GET /admin/usage (which `llmproxy usage`
// asks while serve holds the local ledger) reports that key over its own
// period; before it, the admin API knew no such key.
func TestSIGHUPKeyPeriodsInAdminUsage(t *testing.T) {
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	path := filepath.Join(dir, "llmproxy.yaml")
	head := fmt.Sprintf("listen: %q\ndata_dir: %q\nadmin: { listen: %q, token: admin-token-0123456789 }\n"+
		"backends: [{url: \"http://127.0.0.1:9\"}]\nauth: { defaults: { quota_reset_period: monthly } }\n",
		listen, filepath.Join(dir, "data"), admin)
	if err := os.WriteFile(path, []byte(head+"api_keys: [{ key: sk-one, id: one }]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logBuf := serveFile(t, path)
	eventually(t, 30*time.Second, "the admin listener", func() (bool, string) {
		b := adminGet(admin, "/admin/usage?key=two")
		return strings.Contains(b, `"code":"key_not_found"`), b
	})

	if err := os.WriteFile(path, []byte(head+"api_keys: [{ key: sk-one, id: one }, { key: sk-two, id: two, quota_reset_period: daily }]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the reload", func() (bool, string) {
		return strings.Contains(logBuf.String(), "configuration reloaded"), logBuf.String()
	})
	if b := adminGet(admin, "/admin/usage?key=two"); !strings.Contains(b, `"period":"daily"`) {
		t.Errorf("after the reload /admin/usage?key=two = %s, want the key's own daily period", b)
	}
}

// TestSIGHUPWhileStarting: a SIGHUP that comes while serve is still
// starting (here during the first health round, against a backend that
// does not answer) neither ends the process, as SIGHUP's default action
// would, nor is lost: it is acted on once serve runs.
func TestSIGHUPWhileStarting(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	checking := make(chan struct{}, 1)
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // never answered
			select {
			case checking <- struct{}{}:
			default:
			}
		}
	}()
	dir := t.TempDir()
	path := filepath.Join(dir, "llmproxy.yaml")
	y := fmt.Sprintf("listen: %q\ndata_dir: %q\nbackends: [{url: \"http://%s\"}]\nhealth_check: { path: /health, timeout: 2s }\n",
		freeAddr(t), filepath.Join(dir, "data"), silent.Addr())
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	logBuf := serveFile(t, path)
	select {
	case <-checking:
	case <-time.After(20 * time.Second):
		t.Fatalf("no health check came\n%s", logBuf.String())
	}
	if strings.Contains(logBuf.String(), "gateway listening") {
		t.Fatal("serve was past its first health round already")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the reload once serving", func() (bool, string) {
		return strings.Contains(logBuf.String(), "configuration reloaded"), logBuf.String()
	})
}

// serveFile runs serve (target all) in this process on the config file at
// path until the test ends; its log (JSON lines) goes to the buffer
// returned.
func serveFile(t *testing.T, path string) *syncBuffer { return serveAs(t, path, "all") }

// serveAs is serveFile for target.
func serveAs(t *testing.T, path, target string) *syncBuffer {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	logBuf := &syncBuffer{}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, path, target, "", slog.New(slog.NewJSONHandler(logBuf, nil))) }()
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return logBuf
}

// TestCarryHUPNeverBlocks: a SIGHUP caught both by the early channel and
// by serve's (one signal can reach both while serve takes over) is one
// reload, and carrying it over never blocks: a blocking send into serve's
// full channel hung the process before it listened, deaf to SIGTERM.
func TestCarryHUPNeverBlocks(t *testing.T) {
	early, hup := make(chan os.Signal, 1), make(chan os.Signal, 1)
	early <- syscall.SIGHUP
	hup <- syscall.SIGHUP
	done := make(chan struct{})
	go func() { carryHUP(early, hup); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("carryHUP blocked with both channels holding a SIGHUP")
	}
	if len(hup) != 1 || len(early) != 0 {
		t.Fatalf("hup holds %d, early %d; want one reload pending and nothing left early", len(hup), len(early))
	}
	// Only the early channel caught it: it is carried over.
	early <- syscall.SIGHUP
	<-hup
	carryHUP(early, hup)
	if len(hup) != 1 {
		t.Fatal("a SIGHUP caught early only was not carried over")
	}
}

// TestReloadSaysWhenEventsOutgrowTheEmbeddedServer: a SIGHUP that raises
// server.max_body_bytes (or the capture's size) past what the embedded NATS
// server was started to take says that larger events are published cut
// until a restart; one that lowers it says nothing. Events were cut in
// silence, though the file's sizes applied.
func TestReloadSaysWhenEventsOutgrowTheEmbeddedServer(t *testing.T) {
	base := "backends: [{ url: \"http://127.0.0.1:9\" }]\nserver: { max_body_bytes: 10485760 }\n"
	for _, c := range []struct {
		name, size string
		warn       bool
	}{
		{"raised", "31457280", true},
		{"lowered", "1048576", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			logBuf, next := reloadTo(t, base, strings.Replace(base, "10485760", c.size, 1), "")
			if next == nil {
				t.Fatalf("not reloaded:\n%s", logBuf.String())
			}
			if got := strings.Contains(logBuf.String(), "until a restart the embedded NATS server takes events"); got != c.warn {
				t.Errorf("warned %v, want %v:\n%s", got, c.warn, logBuf.String())
			}
		})
	}
}

// reloadTo starts a gateway on the config from, writes to in its file and
// reloads it as a SIGHUP does, --admin-listen being adminListen: the
// reload's log and the config it put in force (nil: none).
func reloadTo(t *testing.T, from, to, adminListen string) (*syncBuffer, *config.Config) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "llmproxy.yaml")
	if err := os.WriteFile(path, []byte(from), 0o600); err != nil {
		t.Fatal(err)
	}
	running, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if adminListen != "" {
		running.Admin.Listen = adminListen
	}
	gw, err := gateway.New(gateway.Options{Config: running, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(to), 0o600); err != nil {
		t.Fatal(err)
	}
	logBuf := &syncBuffer{}
	next := reload(context.Background(), path, adminListen, running, gw, slog.New(slog.NewJSONHandler(logBuf, nil)))
	return logBuf, next
}
