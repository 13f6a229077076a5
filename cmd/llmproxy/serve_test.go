package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/events"
)

// TestServeHealthListeners: every target serves /healthz and /readyz
// somewhere, or says at start that it does not. The gateway serves them on
// its own listener; a worker (here the notifier) has only the admin
// listener, and without one it logs a warning that names the fix.
func TestServeHealthListeners(t *testing.T) {
	ns := startNATS(t, "127.0.0.1", -1)

	const warning = "no admin listener"
	cases := []struct {
		name   string
		target string
		admin  bool
		// probe is the listener expected to serve /healthz and /readyz:
		// "listen", "admin" or "" for none (then the warning is expected).
		probe string
	}{
		{"notifier without an admin listener", "notifier", false, ""},
		{"notifier with an admin listener", "notifier", true, "admin"},
		{"gateway without an admin listener", "gateway", false, "listen"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			listen, admin := freeAddr(t), ""
			if c.admin {
				admin = freeAddr(t)
			}
			path := filepath.Join(dir, "llmproxy.yaml")
			yaml := fmt.Sprintf("listen: %q\ndata_dir: %q\nnats: { url: %q }\nbackends: [{url: \"http://127.0.0.1:9\"}]\n",
				listen, filepath.Join(dir, "data"), ns.ClientURL())
			if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Admin.Listen = admin // as --admin-listen does
			var logBuf syncBuffer
			ctx, stop := context.WithCancel(context.Background())
			served := make(chan error, 1)
			go func() { served <- serve(ctx, cfg, path, c.target, "", slog.New(slog.NewJSONHandler(&logBuf, nil))) }()
			defer func() {
				stop()
				if err := <-served; err != nil {
					t.Errorf("serve: %v", err)
				}
			}()

			if c.probe == "" {
				eventually(t, 10*time.Second, "the warning", func() (bool, string) {
					return strings.Contains(logBuf.String(), warning), logBuf.String()
				})
				return
			}
			base := "http://" + listen
			if c.probe == "admin" {
				base = "http://" + admin
			}
			for _, p := range []string{"/healthz", "/readyz"} {
				eventually(t, 10*time.Second, c.probe+p, func() (bool, string) {
					resp, err := http.Get(base + p)
					if err != nil {
						return false, err.Error()
					}
					resp.Body.Close()
					return resp.StatusCode == http.StatusOK, resp.Status
				})
			}
			if strings.Contains(logBuf.String(), warning) {
				t.Errorf("warned of no admin listener while %s serves health:\n%s", c.probe, logBuf.String())
			}
			// A gateway without api_keys serves every client, and one with
			// its limits in memory holds them for itself: it says so.
			for _, w := range []string{"authentication is off", "rate_limit.storage is memory"} {
				if said := strings.Contains(logBuf.String(), w); said != (c.target == "gateway") {
					t.Errorf("%s: warned %q: %v\n%s", c.target, w, said, logBuf.String())
				}
			}
		})
	}
}

// TestEndpointsOfKeepsLegacyName: the notifier gets the name a defaulted
// webhook had before, so that it takes over that name's consumer.
func TestEndpointsOfKeepsLegacyName(t *testing.T) {
	cfg, err := config.Parse([]byte("backends: [{url: http://127.0.0.1:9}]\nwebhooks: [{url: https://hooks.example.com/t0k3n, unauthenticated: true}]\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	eps, err := endpointsOf(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || eps[0].Name != cfg.Webhooks[0].Name || eps[0].LegacyName != "hooks-example-com-t0k3n" || !eps[0].Unauthenticated {
		t.Errorf("endpoints %+v", eps)
	}
}

// TestWorkerStopsWhenNATSRefusesItForGood: a meter or notifier whose NATS
// connection the client gives up for good (the server stopped taking its
// credentials) stops with an error naming it, so that what runs it starts it
// again; it stayed up doing nothing, healthy to a liveness probe.
func TestWorkerStopsWhenNATSRefusesItForGood(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), Authorization: "first-token"}
	ns := runNATS(t, opts)
	dir := t.TempDir()
	path := filepath.Join(dir, "llmproxy.yaml")
	yaml := fmt.Sprintf("data_dir: %q\nnats: { url: \"nats://first-token@%s\" }\nbackends: [{url: \"http://127.0.0.1:9\"}]\n"+
		"redis: { url: \"redis://127.0.0.1:6379/15\", prefix: \"llmproxy-test-lost-%d\" }\n",
		filepath.Join(dir, "data"), ns.Addr().String(), time.Now().UnixNano())
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg, path, "meter", "", slog.New(slog.NewJSONHandler(&logBuf, nil))) }()
	eventually(t, 10*time.Second, "the meter connected", func() (bool, string) {
		return ns.NumClients() > 0, logBuf.String()
	})
	changed := *opts
	changed.Authorization = "second-token"
	if err := ns.ReloadOptions(&changed); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "nats connection closed for good") {
			t.Fatalf("serve = %v, want the connection's end", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the meter stayed up without NATS:\n%s", logBuf.String())
	}
}

// TestGatewayWaitsOutARefusal: a gateway whose NATS servers refuse its
// credentials for a while (a credential change rolled out in the wrong
// order) connects again once they take them, and publishes what it kept in
// its outbox meanwhile; nats.go gave the connection up for good after the
// second refusal, and the gateway stayed without NATS until a restart.
func TestGatewayWaitsOutARefusal(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), Authorization: "first-token"}
	ns := runNATS(t, opts)
	listen, logBuf, ready := serveGatewayOn(t, ns, "first-token")
	eventually(t, 10*time.Second, "the gateway ready", ready)

	changed := *opts
	changed.Authorization = "second-token"
	if err := ns.ReloadOptions(&changed); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the refusal logged", func() (bool, string) {
		return strings.Contains(logBuf.String(), "nats refused the credentials"), logBuf.String()
	})
	// Long enough for nats.go to meet the refusal twice more, when it
	// gave the connection up.
	time.Sleep(2*refusedWait + time.Second)
	if strings.Contains(logBuf.String(), "nats connection closed") {
		t.Fatalf("the gateway gave its connection up:\n%s", logBuf.String())
	}
	resp, err := http.Post("http://"+listen+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("X-Request-Id")

	if err := ns.ReloadOptions(opts); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the gateway connected again", ready)
	nc, err := nats.Connect(ns.ClientURL(), nats.Token("first-token"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the outbox's event published", func() (bool, string) {
		s, err := js.Stream(context.Background(), events.StreamName)
		if err != nil {
			return false, err.Error()
		}
		m, err := s.GetLastMsgForSubject(context.Background(), events.StreamSubject)
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(string(m.Data), id), string(m.Data)
	})
}

// authFailures counts the connections a nats-server refused for their
// credentials, from its log.
type authFailures struct{ n atomic.Int64 }

func (a *authFailures) Noticef(string, ...any) {}
func (a *authFailures) Warnf(string, ...any)   {}
func (a *authFailures) Debugf(string, ...any)  {}
func (a *authFailures) Tracef(string, ...any)  {}
func (a *authFailures) Fatalf(string, ...any)  {}
func (a *authFailures) Errorf(format string, v ...any) {
	if strings.Contains(fmt.Sprintf(format, v...), "authentication error") {
		a.n.Add(1)
	}
}

// TestGatewayRefusedFromTheStart: a gateway whose NATS refuses its
// credentials from its first connection says so and tries every
// refusedWait, as one refused after it had connected does (it tried every
// 250 ms and never said "refused"), and connects once they are taken.
func TestGatewayRefusedFromTheStart(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), Authorization: "first-token"}
	ns := runNATS(t, opts)
	var refusals authFailures
	ns.SetLoggerV2(&refusals, false, false, false)
	_, logBuf, ready := serveGatewayOn(t, ns, "second-token")
	eventually(t, 10*time.Second, "the refusal logged", func() (bool, string) {
		return strings.Contains(logBuf.String(), `"msg":"nats refused the credentials"`), logBuf.String()
	})
	before := refusals.n.Load()
	time.Sleep(2*refusedWait + 500*time.Millisecond)
	if n := refusals.n.Load() - before; n > 4 {
		t.Errorf("%d refused connections in %s; want one each %s", n, 2*refusedWait+500*time.Millisecond, refusedWait)
	}
	changed := *opts
	changed.Authorization = "second-token"
	if err := ns.ReloadOptions(&changed); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the gateway connected", ready)
}

// serveGatewayOn serves a gateway whose NATS is ns, with token, until the
// test ends: its listener, its log and whether its /readyz says ready.
func serveGatewayOn(t *testing.T, ns *server.Server, token string) (string, *syncBuffer, func() (bool, string)) {
	t.Helper()
	dir := t.TempDir()
	listen := freeAddr(t)
	path := filepath.Join(dir, "llmproxy.yaml")
	yaml := fmt.Sprintf("listen: %q\ndata_dir: %q\nnats: { url: \"nats://%s@%s\" }\nbackends: [{url: \"http://127.0.0.1:9\"}]\n",
		listen, filepath.Join(dir, "data"), token, ns.Addr().String())
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	logBuf := serveAs(t, path, "gateway")
	ready := func() (bool, string) {
		resp, err := http.Get("http://" + listen + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status + "\n" + logBuf.String()
	}
	return listen, logBuf, ready
}
