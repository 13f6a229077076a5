package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/events/eventstest"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/inflight"
	"github.com/llmproxy/llmproxy/services/gateway/internal/redistest"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestStreamCutByACrashIsBilledAtRestart: a gateway killed while it relays
// a stream leaves the stream's entry in its in-flight journal; the next
// gateway on the same directory publishes the stream's event before it
// serves, billing the text delivered up to the last checkpoint. A stream
// that ended is not published again. With a shared (Redis) admitter, the
// cut stream's concurrency lease is released at the restart, not a lease
// TTL (here 10 minutes) after the crash.
func TestStreamCutByACrashIsBilledAtRestart(t *testing.T) {
	const (
		before = "alpha beta gamma delta "
		after  = "epsilon zeta eta theta iota "
	)
	chunk := func(text string) string {
		b, _ := json.Marshal(map[string]any{"choices": []any{map[string]any{"index": 0, "delta": map[string]string{"content": text}}}})
		return "data: " + string(b) + "\n\n"
	}
	release := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		send := func(s string) {
			_, _ = w.Write([]byte(s))
			fl.Flush()
		}
		if r.Header.Get("X-Short") != "" {
			send(chunk("short reply "))
			send(`data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}` + "\n\n" + "data: [DONE]\n\n")
			return
		}
		for _, w := range strings.Fields(before) {
			send(chunk(w + " "))
		}
		// The next piece comes after a checkpoint is due.
		time.Sleep(inflight.CheckpointEvery + 100*time.Millisecond)
		for i, w := range strings.Fields(after) {
			send(chunk(w + " "))
			if i == 0 {
				// The first piece after the pause makes the
				// checkpoint; the rest come after it.
				time.Sleep(50 * time.Millisecond)
			}
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer backend.Close()
	defer close(release)

	dir := t.TempDir()
	cfg := fmt.Sprintf("backends: [{url: %q}]\napi_keys: [{key: %q, id: alpha, limits: {max_concurrent: 1}}]\n"+
		"rate_limit: {lease_ttl: 10m}\n", backend.URL, testKey)
	rdb, prefix := redistest.New(t, "crash-lease")
	g, err := New(Options{Config: parseConfig(t, cfg), JetStream: eventstest.JetStream(t), OutboxDir: dir, Admitter: ledger.NewRedisAdmitter(rdb, prefix)})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	defer func() { _ = g.Close(context.Background()) }()
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()

	// A stream that ends: its entry is closed.
	if resp, body := do(t, "POST", srv.URL+"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
		map[string]string{"Authorization": "Bearer " + testKey, "X-Short": "1", "X-Request-Id": "ended"}); resp.StatusCode != 200 {
		t.Fatalf("short stream: %d %s", resp.StatusCode, body)
	}

	prompt := strings.Repeat("tell me a story ", 25)
	req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"`+prompt+`"}]}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("X-Request-Id", "cut-short")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// Read the whole of what the backend sent before it stalls.
	br := bufio.NewReader(resp.Body)
	var got strings.Builder
	for want := len(strings.Fields(before + after)); want > 0; {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream: %v after %q", err, got.String())
		}
		if strings.HasPrefix(line, "data: ") {
			got.WriteString(line)
			want--
		}
	}

	// The checkpoint is on disk once the writer has had it.
	journal := filepath.Join(dir, inflight.FileName)
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(journal)
		if strings.Contains(string(b), `"at":`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint in the journal: %s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The crash: the stream's process dies with its files as they are. A
	// copy of the directory stands for them; the next gateway starts on it
	// (with a server of its own, so that only what it publishes is seen).
	crashed := t.TempDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(crashed, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	js2 := eventstest.JetStream(t)
	g2, err := New(Options{Config: parseConfig(t, cfg), JetStream: js2, OutboxDir: crashed, Admitter: ledger.NewRedisAdmitter(rdb, prefix)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = g2.Close(context.Background()) }()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := js2.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	// The outbox copy may hold the ended stream's event, not yet
	// acknowledged when it was made; it comes back as it was, never as a
	// stream cut.
	published := func() map[string][]events.RequestCompleted {
		m := map[string][]events.RequestCompleted{}
		for seq := uint64(1); ; seq++ {
			msg, err := stream.GetMsg(ctx, seq)
			if err != nil {
				return m
			}
			var ev events.RequestCompleted
			if err := json.Unmarshal(msg.Data, &ev); err != nil {
				t.Fatal(err)
			}
			m[ev.ClientRequestID] = append(m[ev.ClientRequestID], ev)
		}
	}
	for len(published()["cut-short"]) == 0 {
		if ctx.Err() != nil {
			t.Fatal("no event published at restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	all := published()
	if n := len(all["cut-short"]); n != 1 {
		t.Fatalf("%d events of the cut stream", n)
	}
	for _, e := range all["ended"] {
		if e.Error != "" || e.UsageSource != events.UsageSourceBackend {
			t.Errorf("the stream that ended came back as %+v", e)
		}
	}
	ev := all["cut-short"][0]
	if ev.KeyID != "alpha" || ev.Endpoint != "/v1/chat/completions" || ev.Model != "m" || !ev.IsStream || ev.StatusCode != 200 || ev.BackendURL != backend.URL {
		t.Errorf("recovered event: %+v", ev)
	}
	if ev.UsageSource != events.UsageSourceEstimated || ev.Error != inflight.ErrorCrashed {
		t.Errorf("usage_source %q error %q", ev.UsageSource, ev.Error)
	}
	// What was delivered by the checkpoint (the words before the pause,
	// and the first of those after, which triggered it) is billed: its
	// text up to the last space, as the tokenizer counts it whole.
	first := strings.Fields(after)[0]
	if want := int64(usage.CountTokens(before + first)); ev.Usage.CompletionTokens != want {
		t.Errorf("completion tokens %d, want %d (%q)", ev.Usage.CompletionTokens, want, before+first)
	}
	if ev.Usage.PromptTokens < int64(len(prompt)/4) || ev.Usage.TotalTokens != ev.Usage.PromptTokens+ev.Usage.CompletionTokens {
		t.Errorf("usage %+v: the prompt is not estimated", ev.Usage)
	}
	if ev.LatencyMS < inflight.CheckpointEvery.Milliseconds() || ev.TTFTMS > ev.LatencyMS {
		t.Errorf("latency %d ttft %d", ev.LatencyMS, ev.TTFTMS)
	}
	if n := testutil.ToFloat64(g2.metrics.recovered); n != 1 {
		t.Errorf("llmproxy_streams_recovered_total = %v, want 1", n)
	}
	b, _ := os.ReadFile(filepath.Join(crashed, inflight.FileName))
	if len(b) != 0 {
		t.Errorf("the journal after recovery holds %q", b)
	}
	// The key's one slot, which the cut stream held, is free again.
	srv2 := httptest.NewServer(g2.Handler())
	defer srv2.Close()
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, body := do(t, "POST", srv2.URL+"/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			map[string]string{"Authorization": "Bearer " + testKey, "X-Short": "1"})
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart the key's slot is still held: %d %s", resp.StatusCode, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCountable(t *testing.T) {
	long := strings.Repeat("字", 100) // 300 bytes, no space
	for _, tc := range []struct {
		text string
		want int
	}{
		{"", 0},
		{"tok1 tok2 ", 9},   // the last space goes with the next word
		{"tok1 tok2 to", 9}, // so does a word still coming
		{" tok1", 0},
		{"short", 0},
		{long, len(long)},
		{long + "\xe5\xad", len(long)}, // a character cut in two waits
	} {
		if got := countable([]byte(tc.text)); got != tc.want {
			t.Errorf("countable(%.20q) = %d, want %d", tc.text, got, tc.want)
		}
	}
}

// TestCheckpointsCountAsTheWhole: a stream's text counted piece by piece,
// as its checkpoints cut it, comes to what the tokenizer gives the text
// whole: a piece's trailing space would otherwise be a token of its own,
// one per checkpoint.
func TestCheckpointsCountAsTheWhole(t *testing.T) {
	var text []byte
	counted, sum := 0, 0
	for i := range 400 {
		text = fmt.Appendf(text, "tok%d ", i)
		if i%7 != 3 {
			continue // a checkpoint every seventh token
		}
		n := countable(text[counted:])
		sum += usage.CountTokens(string(text[counted : counted+n]))
		counted += n
	}
	if whole := usage.CountTokens(string(text[:counted])); sum != whole {
		t.Fatalf("pieces counted %d tokens, the whole %d", sum, whole)
	}
}
