package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestMeterReadyzSeesBatchesNotReplicated: a meter with
// redis.wait_replicas: 1 on a Redis without a replica applies nothing,
// and its /readyz says so (Redis itself answers and takes writes), naming
// the replicas it waited for.
func TestMeterReadyzSeesBatchesNotReplicated(t *testing.T) {
	_, url, prefix := testRedis(t, "meter-ready")
	ns := startNATS(t, "127.0.0.1", -1)
	admin := freeAddr(t)
	serveTarget(t, filepath.Join(t.TempDir(), "llmproxy.yaml"),
		fmt.Sprintf("data_dir: %q\nnats: {url: %q}\nredis: {url: %q, prefix: %q, wait_replicas: 1}\nadmin: {listen: %q, token: admin-token-0123456789}\nbackends: [{url: \"http://127.0.0.1:9\"}]\nlogging: {level: error}\n",
			filepath.Join(t.TempDir(), "data"), ns.ClientURL(), url, prefix, admin), "meter")
	eventually(t, 20*time.Second, "the meter's /readyz answering 200 before any batch", func() (bool, string) {
		code, body := readyz("http://" + admin + "/readyz")
		return code == http.StatusOK, fmt.Sprintf("%d %q", code, body)
	})

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ev := events.RequestCompleted{RequestID: "req-not-replicated", KeyID: "k1", Model: "m", Timestamp: time.Now().UTC(),
		Usage: events.Usage{PromptTokens: 3, CompletionTokens: 4, TotalTokens: 7}}
	body, _ := json.Marshal(ev)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, events.Subject(ev.KeyID), body); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the meter's /readyz saying its batch was not replicated", func() (bool, string) {
		code, body := readyz("http://" + admin + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "not applied") && strings.Contains(body, "replica"),
			fmt.Sprintf("%d %q", code, body)
	})
}
