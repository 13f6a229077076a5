package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/config"
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
	const n = 8 // 2 s of POSTs, twice the connect timeout
	path := dlqFixture(t, ns.ClientURL(), hook.URL, n)

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

// dlqFixture writes a config with the webhook billing at hookURL on the
// NATS at natsURL, and n dead letters of billing (req-0 … req-n-1) into
// its DLQ; it returns the config's path.
func dlqFixture(t *testing.T, natsURL, hookURL string, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "llmproxy.yaml")
	conf := fmt.Sprintf("nats: {url: %q}\nbackends: [{url: http://127.0.0.1:9}]\nwebhooks: [{name: billing, url: %q}]\n", natsURL, hookURL)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("req-%d", i)
		d, _ := json.Marshal(map[string]any{"endpoint": "billing", "event_id": id, "reason": "max_attempts_exceeded",
			"attempts": 10, "event": map[string]string{"request_id": id}})
		if _, err := js.Publish(ctx, events.DLQSubjectFor("billing"), d, jetstream.WithMsgID("billing:"+id)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// TestDLQListShowsSeq: `webhooks dlq list` shows each dead letter's
// sequence in LLMPROXY_DLQ (a SEQ column, "seq" in --json), which
// `replay --id` takes.
func TestDLQListShowsSeq(t *testing.T) {
	path, got := dlqWithReceiver(t, 2)

	code, out, errOut := runCmd(runWebhooks, "dlq", "list", "--config", path, "--json")
	var list []struct {
		Seq     uint64 `json:"seq"`
		EventID string `json:"event_id"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[0].Seq == 0 || list[1].Seq <= list[0].Seq {
		t.Fatalf("list --json: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	code, out, _ = runCmd(runWebhooks, "dlq", "list", "--config", path)
	if code != 0 || !strings.HasPrefix(out, "SEQ") || !strings.Contains(out, fmt.Sprintf("%d  ", list[1].Seq)) {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	code, out, errOut = runCmd(runWebhooks, "dlq", "replay", "--config", path, "--id", strconv.FormatUint(list[1].Seq, 10))
	if code != 0 || !strings.Contains(out, "replayed 1 dead letter(s)") || got.Load() != 1 {
		t.Fatalf("replay --id %d: exit %d, %d delivered\nstdout: %s\nstderr: %s", list[1].Seq, code, got.Load(), out, errOut)
	}
	code, out, _ = runCmd(runWebhooks, "dlq", "list", "--config", path, "--json")
	if code != 0 || !strings.Contains(out, `"event_id": "`+list[0].EventID+`"`) || strings.Contains(out, list[1].EventID) {
		t.Fatalf("after replaying %s: %s", list[1].EventID, out)
	}
}

// TestDLQDiscard: `webhooks dlq discard` deletes the dead letters it is
// told to (one by --id, an endpoint's by --endpoint) without delivering
// them, and refuses to guess when told nothing.
func TestDLQDiscard(t *testing.T) {
	path, got := dlqWithReceiver(t, 3)
	count := func() int {
		t.Helper()
		code, out, errOut := runCmd(runWebhooks, "dlq", "list", "--config", path, "--json")
		var list []json.RawMessage
		if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
			t.Fatalf("list: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		return len(list)
	}

	if code, _, errOut := runCmd(runWebhooks, "dlq", "discard", "--config", path); code != 2 || !strings.Contains(errOut, "--all") || count() != 3 {
		t.Fatalf("discard without a selector: exit %d, %q", code, errOut)
	}
	if code, out, _ := runCmd(runWebhooks, "dlq", "discard", "--config", path, "--id", "req-1"); code != 0 || !strings.Contains(out, "discarded 1 ") || count() != 2 {
		t.Fatalf("discard --id req-1: exit %d, %q", code, out)
	}
	// An id that selects nothing (a typo, or one discarded already) is
	// an error, as it is for replay: exit 1, saying so.
	for _, sub := range []string{"discard", "replay", "list"} {
		if code, out, errOut := runCmd(runWebhooks, "dlq", sub, "--config", path, "--id", "req-1"); code != 1 || !strings.Contains(errOut, `no dead letter "req-1"`) || out != "" || count() != 2 {
			t.Fatalf("%s --id req-1 again: exit %d, %q, stdout %q (want nothing there)", sub, code, errOut, out)
		}
	}
	// So is an endpoint the config does not name, when it has none.
	for _, sub := range []string{"discard", "list", "replay"} {
		if code, _, errOut := runCmd(runWebhooks, "dlq", sub, "--config", path, "--endpoint", "biling"); code != 1 || !strings.Contains(errOut, `no dead letters of endpoint "biling", which the config does not name (it names: billing)`) || count() != 2 {
			t.Fatalf("%s --endpoint biling: exit %d, %q", sub, code, errOut)
		}
	}
	if code, out, _ := runCmd(runWebhooks, "dlq", "discard", "--config", path, "--endpoint", "billing"); code != 0 || !strings.Contains(out, "discarded 2 ") || count() != 0 {
		t.Fatalf("discard --endpoint billing: exit %d, %q", code, out)
	}
	if got.Load() != 0 {
		t.Fatalf("the receiver got %d deliveries of discarded letters", got.Load())
	}
}

// dlqWithReceiver is dlqFixture on a NATS of its own, the webhook's
// receiver taking every POST (204); got counts them.
func dlqWithReceiver(t *testing.T, n int) (path string, got *atomic.Int32) {
	t.Helper()
	ns := startNATS(t, "127.0.0.1", -1)
	got = new(atomic.Int32)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(hook.Close)
	return dlqFixture(t, ns.ClientURL(), hook.URL, n), got
}

// TestDLQListAndReplayByEndpoint: `list --endpoint` and `replay --endpoint`
// keep to that endpoint's dead letters; replay used to take the flag and
// re-deliver every endpoint's.
func TestDLQListAndReplayByEndpoint(t *testing.T) {
	path, got := dlqWithReceiver(t, 2)
	nc, err := nats.Connect(natsURLOf(t, path))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	d, _ := json.Marshal(map[string]any{"endpoint": "audit", "event_id": "req-a", "reason": "permanent_failure",
		"attempts": 1, "event": map[string]string{"request_id": "req-a"}})
	if _, err := js.Publish(context.Background(), events.DLQSubjectFor("audit"), d, jetstream.WithMsgID("audit:req-a")); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runCmd(runWebhooks, "dlq", "list", "--config", path, "--endpoint", "audit", "--json")
	if code != 0 || strings.Contains(out, "billing") || !strings.Contains(out, `"req-a"`) {
		t.Fatalf("list --endpoint audit: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	code, out, errOut = runCmd(runWebhooks, "dlq", "replay", "--config", path, "--endpoint", "billing")
	if code != 0 || !strings.Contains(out, "replayed 2 dead letter(s)") || got.Load() != 2 {
		t.Fatalf("replay --endpoint billing: exit %d, %d delivered\nstdout: %s\nstderr: %s", code, got.Load(), out, errOut)
	}
	code, out, _ = runCmd(runWebhooks, "dlq", "list", "--config", path, "--json")
	if code != 0 || !strings.Contains(out, `"req-a"`) || strings.Contains(out, "billing") {
		t.Fatalf("after replaying billing's: %s", out)
	}
}

// natsURLOf reads nats.url back from a config dlqFixture wrote.
func natsURLOf(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(b), `nats: {url: "`)
	u, _, _ := strings.Cut(rest, `"`)
	return u
}

// TestDLQByEndpointIncludesItsFormerName: `list`, `replay` and `discard
// --endpoint NAME` of an endpoint named by default take the dead letters
// recorded under the name a former release gave it (after the URL's path,
// which the operator cannot type without writing the secret in it), and
// keep to that endpoint's.
func TestDLQByEndpointIncludesItsFormerName(t *testing.T) {
	ns := startNATS(t, "127.0.0.1", -1)
	var got atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(hook.Close)
	path := filepath.Join(t.TempDir(), "llmproxy.yaml")
	conf := fmt.Sprintf("nats: {url: %q}\nbackends: [{url: http://127.0.0.1:9}]\nwebhooks: [{url: %q}, {name: audit, url: %q}]\n",
		ns.ClientURL(), hook.URL+"/hook/t0k3n", hook.URL)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ep := cfg.Endpoints()[0]
	if ep.LegacyName == "" || ep.LegacyName == ep.Name {
		t.Fatalf("endpoint %q has no former name", ep.Name)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct{ endpoint, id string }{{ep.LegacyName, "req-old"}, {ep.LegacyName, "req-old2"}, {"audit", "req-a"}} {
		d, _ := json.Marshal(map[string]any{"endpoint": l.endpoint, "event_id": l.id, "reason": "permanent_failure",
			"attempts": 1, "event": map[string]string{"request_id": l.id}})
		if _, err := js.Publish(ctx, events.DLQSubjectFor(l.endpoint), d, jetstream.WithMsgID(l.endpoint+":"+l.id)); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := runCmd(runWebhooks, "dlq", "list", "--config", path, "--endpoint", ep.Name, "--json")
	if code != 0 || !strings.Contains(out, `"req-old"`) || strings.Contains(out, `"req-a"`) {
		t.Fatalf("list --endpoint %s: exit %d\nstdout: %s\nstderr: %s", ep.Name, code, out, errOut)
	}
	code, out, errOut = runCmd(runWebhooks, "dlq", "discard", "--config", path, "--endpoint", ep.Name, "--id", "req-old2")
	if code != 0 || !strings.Contains(out, "discarded 1 dead letter(s)") {
		t.Fatalf("discard --endpoint %s --id req-old2: exit %d\nstdout: %s\nstderr: %s", ep.Name, code, out, errOut)
	}
	code, out, errOut = runCmd(runWebhooks, "dlq", "replay", "--config", path, "--endpoint", ep.Name)
	if code != 0 || !strings.Contains(out, "replayed 1 dead letter(s)") || got.Load() != 1 {
		t.Fatalf("replay --endpoint %s: exit %d, %d delivered\nstdout: %s\nstderr: %s", ep.Name, code, got.Load(), out, errOut)
	}
	code, out, _ = runCmd(runWebhooks, "dlq", "list", "--config", path, "--json")
	if code != 0 || !strings.Contains(out, `"req-a"`) || strings.Contains(out, "req-old") {
		t.Fatalf("after replaying %s's: %s", ep.Name, out)
	}
}
