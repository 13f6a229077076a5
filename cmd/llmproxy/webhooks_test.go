package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// TestReplayIsNotCutShortByTheConnectTimeout: `webhooks dlq replay` of more
// dead letters than the time allowed to reach NATS can deliver (a DLQ of
// thousands after an outage, each a POST) replays them all, instead of
// stopping midway with "context deadline exceeded" and exit 1.
func TestReplayIsNotCutShortByTheConnectTimeout(t *testing.T) {
	was := webhooksConnectTimeout
	webhooksConnectTimeout = time.Second
	t.Cleanup(func() { webhooksConnectTimeout = was })

	ns := startNATS(t, "127.0.0.1", -1)
	var got atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(250 * time.Millisecond)
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(hook.Close)
	path := filepath.Join(t.TempDir(), "llmproxy.yaml")
	conf := fmt.Sprintf("nats: {url: %q}\nbackends: [{url: http://127.0.0.1:9}]\nwebhooks: [{name: billing, url: %q}]\n", ns.ClientURL(), hook.URL)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	const n = 8 // 2 s of POSTs, twice the connect timeout
	for i := range n {
		id := fmt.Sprintf("req-%d", i)
		d, _ := json.Marshal(map[string]any{"endpoint": "billing", "event_id": id, "reason": "max_attempts_exceeded",
			"attempts": 10, "event": map[string]string{"request_id": id}})
		if _, err := js.Publish(ctx, events.DLQSubjectFor("billing"), d, jetstream.WithMsgID("billing:"+id)); err != nil {
			t.Fatal(err)
		}
	}

	code, out, errOut := runCmd(runWebhooks, "dlq", "replay", "--config", path)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("replayed %d dead letter(s)", n)) {
		t.Fatalf("replay: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if got.Load() != n {
		t.Errorf("receiver got %d deliveries, want %d", got.Load(), n)
	}
	code, out, errOut = runCmd(runWebhooks, "dlq", "list", "--config", path, "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("list after replay: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}
