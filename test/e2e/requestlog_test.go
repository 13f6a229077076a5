package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// The request log end to end (issue 11): response capture, redaction, the
// PostgreSQL recorder and `llmproxy logs`, with real processes.

const (
	keyReqLog     = "sk-llmproxy-e2e-reqlog-0011"
	rlCaptureCap  = 400
	rlPromptWord  = "SECRET-1234"       // the regex rule removes it from the prompt
	rlMetaToken   = "meta-token-7f3a9c" // the JSON path rule removes it
	rlReplySecret = "SECRET-4242"       // the backend's answer holds it
	rlRedacted    = "[REDACTED]"
	rlRecorderN1  = 3000 // events published before the recorder is killed
	rlRecorderN2  = 500  // events published while it is down
	rlKillAtRows  = 500
	rlDefaultPG   = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	rlTablePrefix = "e2e_rl_"
)

// rlPostgres creates a schema of its own for the test and returns a URL
// whose search_path is that schema, and a pool on it. The schema is dropped
// at cleanup. An unreachable PostgreSQL skips the test, or fails it under CI.
func rlPostgres(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	base := os.Getenv("PG_URL")
	if base == "" {
		base = rlDefaultPG
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s is required under CI: %v", base, err)
		}
		t.Skipf("PostgreSQL at %s unreachable (set PG_URL): %v", base, err)
	}
	schema := fmt.Sprintf("%s%d", rlTablePrefix, time.Now().UnixNano())
	_, err = conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	_ = conn.Close(ctx)
	if err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
	})
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	url := base + sep + "search_path=" + schema
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return url, pool
}

// rlSchemaOf returns the schema the request-log table is in, "" if none.
func rlSchemaOf(t *testing.T, pool *pgxpool.Pool) string {
	var s string
	err := pool.QueryRow(context.Background(),
		`SELECT coalesce(max(table_schema), '') FROM information_schema.tables WHERE table_name = 'llmproxy_requests' AND table_schema = current_schema()`).Scan(&s)
	if err != nil {
		t.Fatalf("schema of llmproxy_requests: %v", err)
	}
	return s
}

// rlRow is one request's row; response is nil when the column is NULL.
type rlRow struct {
	requestBody, event string
	response           *string
}

func (r rlRow) all() string {
	s := r.requestBody + "\n" + r.event
	if r.response != nil {
		s += "\n" + *r.response
	}
	return s
}

func (r rlRow) responseText() string {
	if r.response == nil {
		return "NULL"
	}
	return *r.response
}

// rlWaitRow waits for the row of the request the gateway named id.
func rlWaitRow(t *testing.T, pool *pgxpool.Pool, id string) rlRow {
	t.Helper()
	var row rlRow
	eventually(t, 30*time.Second, "row "+id+" in PostgreSQL", func() (bool, string) {
		err := pool.QueryRow(context.Background(),
			`SELECT coalesce(request_body::text, ''), response::text, event::text FROM llmproxy_requests WHERE request_id = $1`, id).
			Scan(&row.requestBody, &row.response, &row.event)
		return err == nil, fmt.Sprint(err)
	})
	return row
}

// rlContent decodes the response column.
func (r rlRow) content(t *testing.T) (string, bool) {
	t.Helper()
	if r.response == nil {
		t.Fatalf("response column is NULL; event %s", r.event)
	}
	var c events.CapturedResponse
	if err := json.Unmarshal([]byte(*r.response), &c); err != nil {
		t.Fatalf("response column %s: %v", *r.response, err)
	}
	return c.Content, c.Truncated
}

// rlLogs runs `llmproxy logs --request-id id --from from --json` and
// returns its output and the events it printed.
func rlLogs(t *testing.T, cfg, id, from string) (string, []map[string]any) {
	t.Helper()
	out, err := runCLI(t, "logs", "--config", cfg, "--request-id", id, "--from", from, "--json")
	if err != nil {
		t.Fatalf("llmproxy logs --request-id %s --from %s: %v", id, from, err)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("llmproxy logs --from %s --json: %v in %q", from, err, out)
	}
	if len(list) != 1 || list[0]["request_id"] != id {
		t.Fatalf("llmproxy logs --request-id %s --from %s: want that one request, got %s", id, from, tail(out, 2000))
	}
	return out, list
}

// capturedOf returns the response content and truncated flag of an event
// decoded as JSON, and whether it had a response at all.
func capturedOf(ev map[string]any) (string, bool, bool) {
	r, ok := ev["response"].(map[string]any)
	if !ok {
		return "", false, false
	}
	c, _ := r["content"].(string)
	tr, _ := r["truncated"].(bool)
	return c, tr, true
}

// deltaText is the text a client shows for an OpenAI SSE reply: its
// content deltas in order.
func deltaText(t *testing.T, body []byte) string {
	t.Helper()
	var sb strings.Builder
	for _, ev := range sseEvents(body) {
		data := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(ev), "data:"))
		if data == "" || data == "[DONE]" || strings.HasPrefix(ev, ":") {
			continue
		}
		var c struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("bad chunk %q: %v", data, err)
		}
		for _, ch := range c.Choices {
			sb.WriteString(ch.Delta.Content)
		}
	}
	return sb.String()
}

// secretEngine answers OpenAI JSON or SSE with rlReplySecret in the text;
// in the stream the secret is split across two deltas.
func secretEngine(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"object":"list","data":[{"id":"secret-model","object":"model"}]}`)
		return
	}
	var req struct {
		Stream        bool `json:"stream"`
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	body, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(body, &req)
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"chatcmpl-s1","object":"chat.completion","created":1700000000,"model":"secret-model","choices":[{"index":0,"message":{"role":"assistant","content":"Your code is `+rlReplySecret+`, keep it safe."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":8,"total_tokens":17}}`)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	f := w.(http.Flusher)
	chunk := func(delta, finish string) string {
		fr := "null"
		if finish != "" {
			fr = `"` + finish + `"`
		}
		return `data: {"id":"chatcmpl-s2","object":"chat.completion.chunk","created":1700000000,"model":"secret-model","choices":[{"index":0,"delta":` + delta + `,"finish_reason":` + fr + `}]}` + "\n\n"
	}
	half := len(rlReplySecret) / 2
	for _, c := range []string{
		chunk(`{"role":"assistant","content":""}`, ""),
		chunk(`{"content":"Your code is "}`, ""),
		chunk(`{"content":"`+rlReplySecret[:half]+`"}`, ""),
		chunk(`{"content":"`+rlReplySecret[half:]+`"}`, ""),
		chunk(`{"content":", keep it safe."}`, ""),
		chunk(`{}`, "stop"),
	} {
		_, _ = io.WriteString(w, c)
		f.Flush()
	}
	if req.StreamOptions.IncludeUsage {
		_, _ = io.WriteString(w, `data: {"id":"chatcmpl-s2","object":"chat.completion.chunk","created":1700000000,"model":"secret-model","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":8,"total_tokens":17}}`+"\n\n")
	}
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
}

// rlGateway is one single binary (target all) with the recorder on.
type rlGateway struct {
	gw, cfg string
	recv    *webhookReceiver
	pool    *pgxpool.Pool
}

func startRLGateway(t *testing.T, mock, secret string, capture bool, redact string) *rlGateway {
	t.Helper()
	pgURL, pool := rlPostgres(t)
	recv, hook := startReceiver(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, fmt.Sprintf(`
listen: %q
data_dir: %q
admin: { listen: %q, token: "e2e-admin-token" }
nats: { embedded_listen: %q }
backends:
  - url: %q
    models: ["mock-model"]
  - url: %q
    models: ["secret-model"]
usage_hook: { url: %q, retry: 20 }
auth: { enabled: true, storage: file }
api_keys:
  - key: %q
    id: reqlog
    name: Request log
logging:
  level: warn
  capture_response: %v
  max_capture_bytes: %d
  redact: %s
  postgres: { url: %q }
`, listen, filepath.Join(dir, "data"), freeAddr(t), freeAddr(t), mock, secret, hook.URL, keyReqLog,
		capture, rlCaptureCap, redact, pgURL))
	start(t, "llmproxy", "serve", "--config", cfg)
	return &rlGateway{gw: "http://" + listen, cfg: cfg, recv: recv, pool: pool}
}

// send sends one chat request named name (X-Request-Id) and returns the
// gateway's request id (the event's request_id) and the body received.
func (g *rlGateway) send(t *testing.T, name, body string) (string, []byte) {
	t.Helper()
	resp, b := post(t, g.gw+"/v1/chat/completions", keyReqLog, name, []byte(body), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: status %d: %s", name, resp.StatusCode, b)
	}
	id := resp.Header.Get("X-LLMProxy-Request-Id")
	if id == "" {
		t.Fatalf("%s: no X-LLMProxy-Request-Id", name)
	}
	return id, b
}

// hook waits for the webhook delivery of the request named name.
func (g *rlGateway) hook(t *testing.T, name string) (map[string]any, string) {
	t.Helper()
	var p map[string]any
	eventually(t, 30*time.Second, "webhook for "+name, func() (bool, string) {
		p = g.recv.snapshot()[name]
		return p != nil, fmt.Sprintf("%d delivered", g.recv.count())
	})
	raw, _ := json.Marshal(p)
	return p, string(raw)
}

func mockChat(maxTokens int, stream bool) string {
	return fmt.Sprintf(`{"model":"mock-model","max_tokens":%d,"stream":%v,"messages":[{"role":"user","content":"hello there"}]}`, maxTokens, stream)
}

// TestRequestLogCaptureRedactionAndLogs: capture on and off, the cap,
// redaction of request and response, and `llmproxy logs` reading one
// request from the stream and from PostgreSQL, with the recorder inside
// the single binary.
func TestRequestLogCaptureRedactionAndLogs(t *testing.T) {
	t.Parallel()
	mockAddr := freeAddr(t)
	start(t, "mockllm", "--listen", mockAddr, "--tokens", "200")
	mock := "http://" + mockAddr
	secret := httptest.NewServer(http.HandlerFunc(secretEngine))
	t.Cleanup(secret.Close)

	on := startRLGateway(t, mock, secret.URL, true, `["SECRET-[0-9]+", "$.metadata.token"]`)
	off := startRLGateway(t, mock, secret.URL, false, `[]`)
	waitHTTP(t, mock+"/health")
	waitHTTP(t, on.gw+"/healthz")
	waitHTTP(t, off.gw+"/healthz")

	// checkCaptured compares the captured response of request id (named
	// name) in the webhook, in PostgreSQL and in `llmproxy logs` from both
	// sources with want: equal when exact, else a prefix of at most the cap.
	checkCaptured := func(t *testing.T, name, id, want string, exact bool) {
		t.Helper()
		check := func(where, got string, truncated, present bool) {
			t.Helper()
			switch {
			case !present:
				t.Errorf("%s: %s: no captured response", name, where)
			case exact && (got != want || truncated):
				t.Errorf("%s: %s: captured %q (truncated %v), want %q (truncated false)", name, where, got, truncated, want)
			case !exact && (!truncated || len(got) > rlCaptureCap || !strings.HasPrefix(want, got) || got == ""):
				t.Errorf("%s: %s: captured %d bytes (truncated %v) %q; want a non-empty prefix of the %d bytes received, at most %d, truncated",
					name, where, len(got), truncated, got, len(want), rlCaptureCap)
			}
		}
		p, _ := on.hook(t, name)
		c, tr, ok := capturedOf(p)
		check("webhook", c, tr, ok)
		_, list := rlLogs(t, on.cfg, id, "stream")
		c, tr, ok = capturedOf(list[0])
		check("logs --from stream", c, tr, ok)
		row := rlWaitRow(t, on.pool, id)
		c, tr = row.content(t)
		check("PostgreSQL row", c, tr, true)
		_, list = rlLogs(t, on.cfg, id, "postgres")
		c, tr, ok = capturedOf(list[0])
		check("logs --from postgres", c, tr, ok)
	}

	t.Run("CaptureWithinCap", func(t *testing.T) {
		id, body := on.send(t, "rl-ns", mockChat(3, false))
		if len(body) >= rlCaptureCap {
			t.Fatalf("reply of %d bytes is not within the %d-byte cap; the test needs a shorter one", len(body), rlCaptureCap)
		}
		checkCaptured(t, "rl-ns", id, string(body), true)

		id, body = on.send(t, "rl-st", mockChat(20, true))
		text := deltaText(t, body)
		if !strings.Contains(text, "tok19") || len(text) >= rlCaptureCap {
			t.Fatalf("stream text %q: want tok0…tok19 within the cap", text)
		}
		checkCaptured(t, "rl-st", id, text, true)
		if rlSchemaOf(t, on.pool) == "" {
			t.Errorf("llmproxy_requests is not in the first schema of the URL's search_path")
		}
	})

	t.Run("CaptureBeyondCapTruncated", func(t *testing.T) {
		id, body := on.send(t, "rl-ns-big", mockChat(120, false))
		if len(body) <= rlCaptureCap {
			t.Fatalf("reply of %d bytes does not exceed the cap", len(body))
		}
		checkCaptured(t, "rl-ns-big", id, string(body), false)

		id, body = on.send(t, "rl-st-big", mockChat(150, true))
		text := deltaText(t, body)
		if len(text) <= rlCaptureCap {
			t.Fatalf("stream text of %d bytes does not exceed the cap", len(text))
		}
		checkCaptured(t, "rl-st-big", id, text, false)
	})

	t.Run("Redaction", func(t *testing.T) {
		req := func(stream bool) string {
			return fmt.Sprintf(`{"model":"secret-model","stream":%v,"messages":[{"role":"user","content":"my password is %s, remember it"}],"metadata":{"token":%q,"team":"blue"}}`,
				stream, rlPromptWord, rlMetaToken)
		}
		leaks := func(s string) []string {
			var found []string
			for _, sec := range []string{rlPromptWord, rlReplySecret, rlMetaToken, "SECRET-"} {
				if strings.Contains(s, sec) {
					found = append(found, sec)
				}
			}
			return found
		}
		for _, stream := range []bool{false, true} {
			name := fmt.Sprintf("rl-secret-stream-%v", stream)
			id, body := on.send(t, name, req(stream))
			received := string(body)
			if stream {
				received = deltaText(t, body)
			}
			if !strings.Contains(received, rlReplySecret) {
				t.Fatalf("%s: the client should receive the backend's answer unchanged, got %q", name, received)
			}

			p, raw := on.hook(t, name)
			if l := leaks(raw); l != nil {
				t.Errorf("%s: webhook payload holds %v: %s", name, l, raw)
			}
			rb, _ := json.Marshal(p["request_body"])
			if !strings.Contains(string(rb), `"content":"my password is [REDACTED], remember it"`) ||
				!strings.Contains(string(rb), `"token":"[REDACTED]"`) || !strings.Contains(string(rb), `"team":"blue"`) {
				t.Errorf("%s: webhook request_body %s: want the secret and metadata.token replaced by %s, the rest kept", name, rb, rlRedacted)
			}
			if c, _, ok := capturedOf(p); !ok || !strings.Contains(c, "Your code is "+rlRedacted+", keep it safe.") {
				t.Errorf("%s: webhook response %q: want the answer with the secret replaced by %s", name, c, rlRedacted)
			}

			for _, from := range []string{"stream", "postgres"} {
				if from == "postgres" {
					rlWaitRow(t, on.pool, id)
				}
				out, list := rlLogs(t, on.cfg, id, from)
				if l := leaks(out); l != nil {
					t.Errorf("%s: llmproxy logs --from %s --json holds %v: %s", name, from, l, out)
				}
				if c, _, ok := capturedOf(list[0]); !ok || !strings.Contains(c, rlRedacted) {
					t.Errorf("%s: llmproxy logs --from %s: response %q, want it redacted", name, from, c)
				}
			}

			row := rlWaitRow(t, on.pool, id)
			if l := leaks(row.all()); l != nil {
				t.Errorf("%s: PostgreSQL row holds %v:\nrequest_body %s\nresponse %s\nevent %s", name, l, row.requestBody, row.responseText(), row.event)
			}
			if !strings.Contains(row.requestBody, rlRedacted) || row.response == nil || !strings.Contains(*row.response, rlRedacted) {
				t.Errorf("%s: PostgreSQL row: request_body %s, response %s: want both present and redacted", name, row.requestBody, row.responseText())
			}
		}
	})

	t.Run("CaptureOff", func(t *testing.T) {
		for _, stream := range []bool{false, true} {
			name := fmt.Sprintf("rl-off-stream-%v", stream)
			id, body := off.send(t, name, mockChat(5, stream))
			if !strings.Contains(string(body), "tok4") {
				t.Fatalf("%s: reply %q", name, body)
			}
			p, raw := off.hook(t, name)
			if _, has := p["response"]; has || strings.Contains(raw, "tok0") {
				t.Errorf("%s: capture off, but the webhook payload holds response content: %s", name, raw)
			}
			row := rlWaitRow(t, off.pool, id)
			if row.response != nil || strings.Contains(row.all(), "tok0") {
				t.Errorf("%s: capture off, but the PostgreSQL row holds response content: response %s, event %s", name, row.responseText(), row.event)
			}
			for _, from := range []string{"stream", "postgres"} {
				out, list := rlLogs(t, off.cfg, id, from)
				if _, has := list[0]["response"]; has || strings.Contains(out, "tok0") {
					t.Errorf("%s: capture off, but llmproxy logs --from %s shows response content: %s", name, from, out)
				}
			}
		}
	})

	t.Run("LogsFindsRequest", func(t *testing.T) {
		// A request sought by the gateway's id, from both sources, in the
		// table view; an unknown id is exit status 1.
		id, _ := on.send(t, "rl-find", mockChat(2, false))
		on.hook(t, "rl-find")
		rlWaitRow(t, on.pool, id)
		for _, from := range []string{"stream", "postgres", "auto"} {
			out, err := runCLI(t, "logs", "--config", on.cfg, "--request-id", id, "--from", from)
			if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "reqlog") {
				t.Errorf("llmproxy logs --request-id %s --from %s: %v\n%s", id, from, err, out)
			}
			if _, err := runCLI(t, "logs", "--config", on.cfg, "--request-id", "req-does-not-exist", "--from", from); err == nil {
				t.Errorf("llmproxy logs --from %s: an unknown request id should exit 1", from)
			}
			// The same request, sought by the X-Request-Id its client sent.
			out, err = runCLI(t, "logs", "--config", on.cfg, "--client-request-id", "rl-find", "--from", from)
			if err != nil || !strings.Contains(out, id) {
				t.Errorf("llmproxy logs --client-request-id rl-find --from %s: %v\n%s", from, err, out)
			}
			if _, err := runCLI(t, "logs", "--config", on.cfg, "--client-request-id", id, "--from", from); err == nil {
				t.Errorf("llmproxy logs --from %s: the gateway's id is not a client request id; want exit 1", from)
			}
		}
	})
}

// TestRequestLogRecorderKilledMidBatch: a `--target recorder` process
// against an external NATS is killed with SIGKILL while it writes and is
// restarted; every event is in PostgreSQL exactly once.
func TestRequestLogRecorderKilledMidBatch(t *testing.T) {
	t.Parallel()
	pgURL, pool := rlPostgres(t)
	_, natsURL := natsServer(t)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}

	var ids []string
	publish := func(from, n int) {
		t.Helper()
		base := time.Now().UTC()
		for i := from; i < from+n; i++ {
			id := fmt.Sprintf("rl-kill-%05d", i)
			e := &events.RequestCompleted{
				RequestID: id, UserID: "user_k", APIKey: "sk-llmproxy-…0011",
				RequestBody: json.RawMessage(fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"request %d"}]}`, i)),
				Usage:       events.Usage{PromptTokens: 5, CompletionTokens: int64(i % 50), TotalTokens: 5 + int64(i%50)},
				Endpoint:    "/v1/chat/completions", Timestamp: base.Add(time.Duration(i) * time.Microsecond),
				BackendURL: "http://backend", LatencyMS: 12, StatusCode: 200,
				KeyID: fmt.Sprintf("k%d", i%4), KeyName: "kill test", Model: "m", UsageSource: events.UsageSourceBackend,
				Response: &events.CapturedResponse{Content: strings.Repeat("answer ", 20)},
			}
			body, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := js.PublishAsync(events.Subject(e.KeyID), body, jetstream.WithMsgID(id)); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			t.Fatal("publish did not complete")
		}
	}
	counts := func() (rows, distinct int, err error) {
		err = pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT request_id) FROM llmproxy_requests`).Scan(&rows, &distinct)
		return
	}

	publish(0, rlRecorderN1)

	dir := t.TempDir()
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, fmt.Sprintf(`
listen: %q
data_dir: %q
nats: { url: %q }
backends:
  - url: http://127.0.0.1:9
logging:
  level: info
  postgres: { url: %q }
`, freeAddr(t), filepath.Join(dir, "data"), natsURL, pgURL))
	rec := start(t, "llmproxy", "serve", "--config", cfg, "--target", "recorder", "--admin-listen", freeAddr(t))

	// Kill it once the first batches are in, while a batch transaction
	// holds the table (a lock by another backend than ours): mid-batch.
	// Should no poll catch one, it is killed before the last batches.
	inBatch := func() bool {
		var locks int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks
			WHERE relation = 'llmproxy_requests'::regclass AND pid <> pg_backend_pid()`).Scan(&locks)
		return err == nil && locks > 0
	}
	var atKill int
	midBatch := false
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, _, err := counts()
		if err == nil && n >= rlKillAtRows {
			if midBatch = inBatch(); midBatch || n >= rlRecorderN1-2*rlKillAtRows {
				rec.stop(syscall.SIGKILL)
				atKill = n
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the recorder wrote %d rows in 60s (err %v)", n, err)
		}
	}
	afterKill, _, _ := counts()
	t.Logf("recorder killed with %d rows written (%d once its transaction was gone) of %d published; inside a batch transaction: %v",
		atKill, afterKill, rlRecorderN1, midBatch)
	if afterKill >= rlRecorderN1 {
		t.Fatalf("the recorder had written all %d events before the kill; the kill was not mid-run", rlRecorderN1)
	}

	// More events while it is down, then the restart.
	publish(rlRecorderN1, rlRecorderN2)
	n := rlRecorderN1 + rlRecorderN2
	restarted := time.Now()
	rec.start()
	eventually(t, 60*time.Second, "every event in PostgreSQL after the restart", func() (bool, string) {
		rows, distinct, err := counts()
		return err == nil && rows == n && distinct == n, fmt.Sprintf("rows %d, distinct %d of %d (err %v)", rows, distinct, n, err)
	})
	t.Logf("all %d events in PostgreSQL %s after the restart", n, time.Since(restarted).Round(time.Millisecond))

	// Each of the published ids once, and the durable consumer settled.
	var present int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM llmproxy_requests WHERE request_id = ANY($1)`, ids).Scan(&present); err != nil {
		t.Fatal(err)
	}
	if present != n {
		t.Errorf("%d of the %d published request ids are in the table", present, n)
	}
	eventually(t, 30*time.Second, "the recorder consumer settles every event", func() (bool, string) {
		c, err := js.Consumer(ctx, events.StreamName, "recorder")
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return info.NumPending == 0 && info.NumAckPending == 0,
			fmt.Sprintf("pending %d, ack pending %d, redelivered %d", info.NumPending, info.NumAckPending, info.NumRedelivered)
	})
	rows, distinct, err := counts()
	if err != nil || rows != n || distinct != n {
		t.Errorf("count(*) = %d, count(distinct request_id) = %d, want %d each (err %v)", rows, distinct, n, err)
	}
	var tokens int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(completion_tokens), 0) FROM llmproxy_requests`).Scan(&tokens); err != nil {
		t.Fatal(err)
	}
	var want int64
	for i := range n {
		want += int64(i % 50)
	}
	if tokens != want {
		t.Errorf("sum(completion_tokens) = %d, want %d", tokens, want)
	}
	rec.stop(syscall.SIGTERM)
}
