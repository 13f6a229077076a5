package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/keys"
	"github.com/llmproxy/llmproxy/services/gateway/internal/auth"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redistest"
)

// TestKeyChangesTakeEffectAtOnce: a key of the Redis key store disabled,
// enabled or deleted (by `llmproxy keys` or the admin API, on any host) takes
// effect on a gateway at once, though the gateway cached what it read for
// auth.DefaultCacheTTL: the change is announced, and the gateway forgets the
// key.
func TestKeyChangesTakeEffectAtOnce(t *testing.T) {
	rdb, prefix := redistest.New(t, "keychanges")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer backend.Close()
	cfg := parseConfig(t, `
backends: [{url: "`+backend.URL+`"}]
auth: {enabled: true, storage: redis}
redis: {url: "redis://unused"}
`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, err := New(Options{Config: cfg, Redis: rdb, RedisPrefix: prefix, Events: newSink()})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(ctx)
	gw := httptest.NewServer(g.Handler())
	defer gw.Close()
	status := func(secret string) int {
		resp, _ := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[]}`, map[string]string{"Authorization": "Bearer " + secret})
		return resp.StatusCode
	}
	// within waits for want, well inside the cache's TTL: without the
	// announcement the cached answer would stand that long.
	within := func(what, secret string, want int) {
		t.Helper()
		deadline := time.Now().Add(auth.DefaultCacheTTL / 2)
		for {
			got := status(secret)
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: still %d after %v, want %d", what, got, auth.DefaultCacheTTL/2, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	secret, _, err := keys.Create(ctx, rdb, prefix, keys.Spec{ID: "live"})
	if err != nil {
		t.Fatal(err)
	}
	if s := status(secret); s != 200 {
		t.Fatalf("a new key: %d", s)
	}
	if _, err := keys.SetStatus(ctx, rdb, prefix, "live", keys.StatusDisabled); err != nil {
		t.Fatal(err)
	}
	within("disabled", secret, http.StatusForbidden)
	if _, err := keys.SetStatus(ctx, rdb, prefix, "live", keys.StatusActive); err != nil {
		t.Fatal(err)
	}
	within("enabled again", secret, 200)
	if err := keys.Delete(ctx, rdb, prefix, "live"); err != nil {
		t.Fatal(err)
	}
	within("deleted", secret, http.StatusUnauthorized)
}

// TestKeyChangesGiveUpASilentConnection: a subscription whose Redis takes
// the PING and answers nothing (gone without a word behind a proxy or a
// dropped route) is given up after two silences, so that it can be made
// again on a new connection.
func TestKeyChangesGiveUpASilentConnection(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: fakeRedis(t, nil), Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	g := &Gateway{redis: rdb, redisPrefix: "p", keyPing: 50 * time.Millisecond}
	done := make(chan error, 1)
	go func() {
		_, err := g.listenKeyChanges(context.Background())
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no answer to a PING") {
			t.Fatalf("listenKeyChanges = %v, want it to give up the silent connection", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("listenKeyChanges still listening on a connection that answers no PING")
	}
}

// TestKeyChangesSubscribeAgainAfterARefusal: a SUBSCRIBE Redis refused
// (an ACL user without the channel, granted it since) is sent again, on a
// connection that is not broken and so would never be made again.
func TestKeyChangesSubscribeAgainAfterARefusal(t *testing.T) {
	var subscribes atomic.Int32
	rdb := redis.NewClient(&redis.Options{Addr: fakeRedis(t, &subscribes), Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	g := &Gateway{redis: rdb, redisPrefix: "p", log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	g.rt.Store(&runtime{keys: auth.NewRedisStore(rdb, "p", &config.Config{}, 0)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.watchKeyChanges(ctx)
	for deadline := time.Now().Add(3 * time.Second); subscribes.Load() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d SUBSCRIBE after a refusal, want it sent again", subscribes.Load())
		}
	}
}

// TestKeyChangesNotAskedOfFileKeys: keys from the config file are not
// cached as the Redis key store's are, so a gateway whose Redis serves
// only the limits neither subscribes (its ACL user need not have the
// channel) nor warns that it is not subscribed; a reload that makes Redis
// the key store subscribes.
func TestKeyChangesNotAskedOfFileKeys(t *testing.T) {
	var subscribes atomic.Int32
	subscribes.Store(1) // every SUBSCRIBE answered
	rdb := redis.NewClient(&redis.Options{Addr: fakeRedis(t, &subscribes), Protocol: 2, DisableIdentity: true})
	defer rdb.Close()
	logs := &records{}
	g := &Gateway{redis: rdb, redisPrefix: "p", log: slog.New(logs)}
	cfg := parseConfig(t, `
backends: [{url: "http://127.0.0.1:9"}]
auth: {enabled: true}
api_keys: [{key: "sk-llmproxy-filekey-0001", id: "k1"}]
`)
	fs, err := auth.NewFileStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.rt.Store(&runtime{keys: fs})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.watchKeyChanges(ctx)
	time.Sleep(500 * time.Millisecond)
	if n, lines := subscribes.Load()-1, logs.lines("key changes: not subscribed; a key's change takes effect when its cached entry expires"); n != 0 || len(lines) != 0 {
		t.Fatalf("keys from the file: %d SUBSCRIBE, %d lines of not being subscribed", n, len(lines))
	}
	g.rt.Store(&runtime{keys: auth.NewRedisStore(rdb, "p", cfg, 0)})
	for deadline := time.Now().Add(3 * keyStorePoll); subscribes.Load() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no SUBSCRIBE once the key store is Redis's")
		}
	}
}

// fakeRedis serves silentRedis on a port of its own until the test ends,
// and returns its address.
func fakeRedis(t *testing.T, subscribes *atomic.Int32) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go silentRedis(c, subscribes)
		}
	}()
	return ln.Addr().String()
}

// silentRedis answers a SUBSCRIBE as Redis does (the first refused, as a
// Redis refuses an ACL user without the channel, when subscribes counts
// them), and a PING never.
func silentRedis(c net.Conn, subscribes *atomic.Int32) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if !strings.HasPrefix(line, "*") {
			continue
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		args := make([]string, 0, n)
		for range n {
			if _, err := r.ReadString('\n'); err != nil { // $len
				return
			}
			a, err := r.ReadString('\n')
			if err != nil {
				return
			}
			args = append(args, strings.TrimSpace(a))
		}
		switch {
		case len(args) == 2 && strings.EqualFold(args[0], "subscribe") && subscribes != nil && subscribes.Add(1) == 1:
			fmt.Fprintf(c, "-NOPERM this user has no permissions to access one of the channels used as arguments\r\n")
		case len(args) == 2 && strings.EqualFold(args[0], "subscribe"):
			fmt.Fprintf(c, "*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n", len(args[1]), args[1])
		case len(args) > 0 && strings.EqualFold(args[0], "ping"):
			// Taken, and never answered.
		default: // HELLO, as a Redis before 6 answers it
			fmt.Fprintf(c, "-ERR unknown command\r\n")
		}
	}
}
