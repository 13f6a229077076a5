package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/prometheus/client_golang/prometheus"
)

// TestTagsListOnlyTheKeysModels: Ollama's GET /api/tags, asked with a key
// restricted to some models, lists only those; an unrestricted key gets the
// backend's list as it is.
func TestTagsListOnlyTheKeysModels(t *testing.T) {
	const tags = `{"models":[{"name":"llama3:latest","model":"llama3:latest","size":1},` +
		`{"name":"qwen2.5:7b","model":"qwen2.5:7b","size":2},{"name":"mistral:latest","model":"mistral:latest","size":3}]}`
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(tags))
	}))
	defer backend.Close()
	const limited, open = "sk-llmproxy-unit-limited-0044", "sk-llmproxy-unit-open-00045"
	yaml := fmt.Sprintf("backends: [{url: %q}]\napi_keys:\n  - {key: %q, id: limited, allowed_models: [llama3, \"qwen2.5:7b\"]}\n  - {key: %q, id: open}\n",
		backend.URL, limited, open)
	gw, s := gatewayFromYAML(t, yaml)
	names := func(key string) []string {
		resp, body := do(t, "GET", gw.URL+"/api/tags", "", map[string]string{"Authorization": "Bearer " + key})
		// A model list bills nothing, and nothing is estimated for it.
		if ev := s.next(t); ev.UsageSource != events.UsageSourceBackend || ev.Usage.TotalTokens != 0 {
			t.Fatalf("the model list's event: usage %+v (%s), want nothing, from the backend", ev.Usage, ev.UsageSource)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		var list struct{ Models []struct{ Name string } }
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		var out []string
		for _, m := range list.Models {
			out = append(out, m.Name)
		}
		return out
	}
	if got := names(limited); !slices.Equal(got, []string{"llama3:latest", "qwen2.5:7b"}) {
		t.Fatalf("restricted key sees %v", got)
	}
	if got := names(open); len(got) != 3 {
		t.Fatalf("open key sees %v", got)
	}
	// A name the list shows is one the key may ask for.
	for model, want := range map[string]int{"llama3:latest": 200, "llama3": 200, "qwen2.5:7b": 200, "mistral:latest": 403} {
		resp, body := do(t, "POST", gw.URL+"/api/chat", `{"model":"`+model+`","messages":[]}`, map[string]string{"Authorization": "Bearer " + limited})
		if resp.StatusCode != want {
			t.Errorf("chat with %s: %d %s, want %d", model, resp.StatusCode, body, want)
		}
		s.next(t)
	}
}

// TestTagsAreTheUnionOfTheBackends: /api/tags lists every Ollama backend's
// models once each (the first backend's entry for a name two list), in the
// backends' order, whichever backend a round robin would pick; a backend
// that is no Ollama adds nothing; a key limited to some models sees those.
func TestTagsAreTheUnionOfTheBackends(t *testing.T) {
	serve := func(tags string) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/api/tags" || tags == "" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, tags)
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	one := serve(`{"models":[{"name":"llama3:latest","model":"llama3:latest","size":1},{"name":"qwen2.5:7b","model":"qwen2.5:7b","size":2}]}`)
	two := serve(`{"models":[{"name":"qwen2.5:7b","model":"qwen2.5:7b","size":99},{"name":"mistral:latest","model":"mistral:latest","size":3}]}`)
	vllm := serve("") // no /api/tags
	const limited, open = "sk-llmproxy-unit-limited-0046", "sk-llmproxy-unit-open-00047"
	yaml := fmt.Sprintf("backends: [{url: %q}, {url: %q}, {url: %q}]\napi_keys:\n  - {key: %q, id: limited, allowed_models: [mistral]}\n  - {key: %q, id: open}\n",
		one.URL, vllm.URL, two.URL, limited, open)
	gw, s := gatewayFromYAML(t, yaml)
	list := func(key string) []string {
		resp, body := do(t, "GET", gw.URL+"/api/tags", "", map[string]string{"Authorization": "Bearer " + key})
		s.next(t)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		var l struct {
			Models []struct {
				Name string
				Size int
			}
		}
		if err := json.Unmarshal([]byte(body), &l); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		var out []string
		for _, m := range l.Models {
			out = append(out, fmt.Sprintf("%s/%d", m.Name, m.Size))
		}
		return out
	}
	want := []string{"llama3:latest/1", "qwen2.5:7b/2", "mistral:latest/3"}
	for range 3 { // as many as there are backends to pick
		if got := list(open); !slices.Equal(got, want) {
			t.Fatalf("open key sees %v, want %v", got, want)
		}
	}
	if got := list(limited); !slices.Equal(got, []string{"mistral:latest/3"}) {
		t.Fatalf("limited key sees %v", got)
	}
}

// TestOllamaToolEndpoints: what Ollama's tools ask besides chat (the
// ollama CLI and Continue read /api/show, Open WebUI checks /api/version
// and lists /api/ps) is served: /api/show goes to a backend of the model,
// checked against the key's models and reserving nothing; /api/version
// from the first backend that answers it (not one that is no Ollama);
// /api/ps is the union of the backends' lists.
func TestOllamaToolEndpoints(t *testing.T) {
	serve := func(model string) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			switch r.URL.Path {
			case "/api/show":
				b, _ := io.ReadAll(r.Body)
				_, _ = fmt.Fprintf(w, `{"details":{"family":"llama"},"served_by":%q,"asked":%s}`, model, b)
			case "/api/version":
				_, _ = io.WriteString(w, `{"version":"0.5.1"}`)
			case "/api/ps":
				_, _ = fmt.Fprintf(w, `{"models":[{"name":%q,"model":%q,"size_vram":1}]}`, model, model)
			default:
				http.NotFound(w, r)
			}
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	a, b := serve("llama3:latest"), serve("qwen2.5:7b")
	vllm := httptest.NewServer(http.NotFoundHandler()) // no Ollama: first in the list
	defer vllm.Close()
	const limited = "sk-llmproxy-unit-limited-0048"
	yaml := fmt.Sprintf("backends: [{url: %q, models: [other]}, {url: %q, models: [llama3]}, {url: %q, models: [\"qwen2.5:7b\"]}]\n"+
		"api_keys:\n  - {key: %q, id: limited, allowed_models: [llama3], total_quota: 1}\n", vllm.URL, a.URL, b.URL, limited)
	gw, s := gatewayFromYAML(t, yaml)
	key := map[string]string{"Authorization": "Bearer " + limited}
	// A quota of one token: /api/show reserves nothing, so it is let in.
	resp, body := do(t, "POST", gw.URL+"/api/show", `{"model":"llama3:latest"}`, key)
	if ev := s.next(t); resp.StatusCode != 200 || !strings.Contains(string(body), `"served_by":"llama3:latest"`) || ev.Usage.TotalTokens != 0 || ev.UsageSource != events.UsageSourceBackend {
		t.Fatalf("show: %d %s, event usage %+v (%s), want none, not estimated", resp.StatusCode, body, ev.Usage, ev.UsageSource)
	}
	// Ollama's older field, "name", names the model too; without either,
	// Ollama's 400.
	resp, body = do(t, "POST", gw.URL+"/api/show", `{"name":"llama3"}`, key)
	if ev := s.next(t); resp.StatusCode != 200 || !strings.Contains(string(body), `"served_by":"llama3:latest"`) || ev.Model != "llama3" {
		t.Fatalf("show by name: %d %s, event model %q", resp.StatusCode, body, ev.Model)
	}
	// "name" twice in two spellings: refused, as "model" is (an engine
	// that matches names in any case would show the other).
	resp, body = do(t, "POST", gw.URL+"/api/show", `{"name":"llama3","Name":"qwen2.5:7b"}`, key)
	if s.next(t); resp.StatusCode != 400 || !strings.Contains(string(body), `"code":"ambiguous_field"`) {
		t.Fatalf("show with two names: %d %s", resp.StatusCode, body)
	}
	// A name that is no string: Ollama's own 400, not "model is required".
	resp, body = do(t, "POST", gw.URL+"/api/show", `{"name":5}`, key)
	if s.next(t); resp.StatusCode != 400 || !strings.Contains(string(body), `"code":"invalid_type"`) || !strings.Contains(string(body), `'name'`) {
		t.Fatalf("show with a number for its name: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", gw.URL+"/api/show", `{}`, key)
	if s.next(t); resp.StatusCode != 400 || !strings.Contains(string(body), `"error":"model is required"`) {
		t.Fatalf("show of nothing: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", gw.URL+"/api/show", `{"model":"qwen2.5:7b"}`, key)
	s.next(t)
	if resp.StatusCode != 403 || !strings.Contains(string(body), `"error":"this API key may not use model qwen2.5:7b`) {
		t.Fatalf("show of a model the key may not use: %d %s, want 403 in Ollama's shape", resp.StatusCode, body)
	}
	for range 3 { // whichever backend a round robin would pick
		resp, body = do(t, "GET", gw.URL+"/api/version", "", key)
		s.next(t)
		if resp.StatusCode != 200 || string(body) != `{"version":"0.5.1"}` {
			t.Fatalf("version: %d %s", resp.StatusCode, body)
		}
	}
	resp, body = do(t, "GET", gw.URL+"/api/ps", "", key)
	s.next(t)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "llama3:latest") || strings.Contains(string(body), "qwen") {
		t.Fatalf("ps: %d %s, want the key's llama3 only", resp.StatusCode, body)
	}
}

// TestModelsListsOllamaNamesOnce: /v1/models lists a model a backend's
// config and its own list spell with and without :latest once.
func TestModelsListsOllamaNamesOnce(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"object":"list","data":[{"id":"llama3:latest","object":"model"}]}`)
	}))
	defer backend.Close()
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q, models: [llama3]}]\n", backend.URL))
	resp, body := do(t, "GET", gw.URL+"/v1/models", "", nil)
	s.next(t)
	var l struct{ Data []struct{ ID string } }
	if err := json.Unmarshal(body, &l); err != nil || resp.StatusCode != 200 || len(l.Data) != 1 {
		t.Fatalf("%d %s, want the model once", resp.StatusCode, body)
	}
}

// TestListRequestWhoseClientLeft: a client that leaves while the gateway
// asks the backends for a list is recorded as 499, as one that leaves
// before any other reply began.
func TestListRequestWhoseClientLeft(t *testing.T) {
	hang := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer backend.Close()
	defer close(hang)
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}]\n", backend.URL))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", gw.URL+"/api/tags", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the list answered %d before the client left", resp.StatusCode)
	}
	if ev := s.next(t); ev.StatusCode != 499 || ev.Error != "client_closed_request" {
		t.Fatalf("event: status %d error %q, want 499 client_closed_request", ev.StatusCode, ev.Error)
	}
}

// TestListsDoNotWaitForAHungBackend: a model list waits for a backend that
// has stopped answering only listWait, not the listTimeout it is asked for,
// and lists it as it last answered; one that never answered is left out.
// The hung backend is asked once at a time, however many lists wait for it.
func TestListsDoNotWaitForAHungBackend(t *testing.T) {
	hang := make(chan struct{})
	var hung atomic.Bool
	var asked atomic.Int32
	serve := func(model string, hangs func() bool) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/models" {
				http.NotFound(w, r)
				return
			}
			if hangs() {
				asked.Add(1)
				select {
				case <-hang:
				case <-r.Context().Done():
				}
				return
			}
			_, _ = fmt.Fprintf(w, `{"object":"list","data":[{"id":%q,"object":"model"}]}`, model)
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	up := serve("up-model", func() bool { return false })
	flaky := serve("flaky-model", hung.Load)
	never := serve("never-model", func() bool { return true })
	t.Cleanup(func() { close(hang) })
	gw, s := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}, {url: %q}]\n", up.URL, flaky.URL))
	list := func() ([]string, time.Duration) {
		start := time.Now()
		resp, body := do(t, "GET", gw.URL+"/v1/models", "", nil)
		took := time.Since(start)
		s.next(t)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		var l struct{ Data []struct{ ID string } }
		if err := json.Unmarshal([]byte(body), &l); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		var ids []string
		for _, m := range l.Data {
			ids = append(ids, m.ID)
		}
		return ids, took
	}
	want := []string{"flaky-model", "up-model"}
	if got, _ := list(); !slices.Equal(got, want) {
		t.Fatalf("list %v, want %v", got, want)
	}
	hung.Store(true)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			got, took := list()
			if !slices.Equal(got, want) || took >= listTimeout {
				t.Errorf("with the backend hung: %v in %v, want %v before %v", got, took, want, listTimeout)
			}
		})
	}
	wg.Wait()
	if n := asked.Load(); n != 1 {
		t.Errorf("the hung backend was asked %d times by three lists at once, want once", n)
	}

	// A backend that answered and is now gone (its connections refused)
	// is listed as it last answered too.
	gone := serve("gone-model", func() bool { return false })
	gw3, s3 := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}, {url: %q}]\n", up.URL, gone.URL))
	for i := range 2 {
		resp, body := do(t, "GET", gw3.URL+"/v1/models", "", nil)
		s3.next(t)
		if resp.StatusCode != 200 || !strings.Contains(string(body), "gone-model") {
			t.Fatalf("list %d with the backend gone: %d %s", i, resp.StatusCode, body)
		}
		gone.Close()
	}

	// A backend hung from the start has no list to show.
	gw2, s2 := gatewayFromYAML(t, fmt.Sprintf("backends: [{url: %q}, {url: %q}]\n", up.URL, never.URL))
	start := time.Now()
	resp, body := do(t, "GET", gw2.URL+"/v1/models", "", nil)
	s2.next(t)
	if took := time.Since(start); resp.StatusCode != 200 || !strings.Contains(string(body), "up-model") || strings.Contains(string(body), "never-model") || took >= listTimeout {
		t.Fatalf("with a backend that never answered: %d %s in %v", resp.StatusCode, body, took)
	}
}

// TestShowIsNoTTFTSample: a model's details (/api/show) are not a sample of
// llmproxy_ttft_ms, which times the first tokens of replies; a chat is.
func TestShowIsNoTTFTSample(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/api/show" {
			_, _ = io.WriteString(w, `{"details":{"family":"llama"}}`)
			return
		}
		_, _ = io.WriteString(w, `{"model":"llama3","message":{"role":"assistant","content":"hi"},"done":true,"prompt_eval_count":3,"eval_count":1}`)
	}))
	defer backend.Close()
	cfg := parseConfig(t, fmt.Sprintf("backends: [{url: %q}]\n", backend.URL))
	reg := prometheus.NewRegistry()
	gw, s := serveOptions(t, Options{Config: cfg, Registerer: reg})
	for _, path := range []string{"/api/show", "/api/show", "/api/chat"} {
		resp, body := do(t, "POST", gw.URL+path, `{"model":"llama3","stream":false}`, nil)
		s.next(t)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	// The metrics are counted once the reply has gone out, after its event.
	for deadline := time.Now().Add(5 * time.Second); counted(t, reg, "llmproxy_requests_total", nil) < 3 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	h := gathered(t, reg, "llmproxy_ttft_ms", nil)
	if len(h) != 1 || h[0].GetHistogram().GetSampleCount() != 1 {
		t.Fatalf("llmproxy_ttft_ms: %v, want the chat's sample alone", h)
	}
}
