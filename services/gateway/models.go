package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
	"github.com/llmproxy/llmproxy/services/gateway/internal/balancer"
)

// modelEntry is one model of GET /v1/models, in OpenAI's shape.
type modelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// serveModels answers GET /v1/models with the union of every available
// backend's models (and the models configured for backends that list
// them), each model once, leaving out those no request could be routed to.
// A key restricted to some models sees only those.
func (g *Gateway) serveModels(w http.ResponseWriter, r *http.Request) {
	g.inflight.Add(1)
	defer g.inflight.Add(-1)
	x := g.begin(w, r)
	defer g.end(x)
	if e := g.prepare(r, x); e != nil {
		g.fail(w, x, e)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	var (
		mu   sync.Mutex
		seen = map[string]modelEntry{}
		wg   sync.WaitGroup
	)
	add := func(m modelEntry) {
		if m.ID == "" || (x.key != nil && !x.key.AllowsModel(m.ID)) {
			return
		}
		// A model only standbys serve (one a standby's engine reports
		// that no backend with a weight serves) is answered 404
		// model_not_found: it is not on the list either.
		if !x.rt.pool.HasModel(m.ID) {
			return
		}
		if m.Object == "" {
			m.Object = "model"
		}
		mu.Lock()
		if _, ok := seen[m.ID]; !ok {
			seen[m.ID] = m
		}
		mu.Unlock()
	}
	now := time.Now()
	for _, up := range x.rt.pool.Upstreams() {
		for m := range up.Models {
			add(modelEntry{ID: m, OwnedBy: up.Name})
		}
		if !up.Available(now) {
			continue
		}
		wg.Add(1)
		go func(up *balancer.Upstream) {
			defer wg.Done()
			for _, m := range g.backendModels(ctx, up) {
				if up.Serves(m.ID) {
					add(m)
				}
			}
		}(up)
	}
	wg.Wait()
	list := make([]modelEntry, 0, len(seen))
	for _, m := range seen {
		list = append(list, m)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	if len(list) == 0 && !x.rt.pool.AnyAvailable() {
		g.failForward(w, x, apierr.Unavailable("no_backend_available", "no backend is available; try again shortly"))
		g.finish(r.Context(), x)
		g.observe(x)
		return
	}
	body, _ := json.Marshal(map[string]any{"object": "list", "data": list})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	x.status = http.StatusOK
	_, _ = w.Write(body)
	g.finish(r.Context(), x)
	g.observe(x)
}

// backendModels asks one backend for its models; a backend that fails to
// answer contributes none.
func (g *Gateway) backendModels(ctx context.Context, up *balancer.Upstream) []modelEntry {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.URL.JoinPath("/v1/models").String(), nil)
	if err != nil {
		return nil
	}
	up.SetHeaders(req)
	resp, err := up.Transport.RoundTrip(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	var out struct {
		Data []modelEntry `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&out); err != nil {
		return nil
	}
	return out.Data
}

// filtersTags reports whether x is an Ollama model list (GET /api/tags)
// asked with a key restricted to some models: the reply lists only those.
func (x *exchange) filtersTags() bool {
	return x.path == "/api/tags" && x.key != nil && x.key.AllowedModels != nil
}

// maxTagsBody bounds the model list held to be filtered.
const maxTagsBody = 16 << 20

// relayTags answers GET /api/tags for a key restricted to some models with
// the backend's list less the models the key may not use (matched by name
// or model, with and without the ":latest" tag Ollama adds). A reply that
// is not such a list is refused rather than passed on whole. A failed
// read of the reply is returned and fails the try, as in relayWithHook.
func (g *Gateway) relayTags(w http.ResponseWriter, x *exchange, resp *http.Response) error {
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTagsBody+1))
	if err != nil {
		return err
	}
	x.firstByte(resp.StatusCode)
	var list struct {
		Models []json.RawMessage `json:"models"`
	}
	enc := resp.Header.Get("Content-Encoding")
	if err != nil || len(body) > maxTagsBody || (enc != "" && enc != "identity") || json.Unmarshal(body, &list) != nil {
		g.failForward(w, x, apierr.BadGateway("the backend's model list could not be read"))
		return nil
	}
	kept := make([]json.RawMessage, 0, len(list.Models))
	for _, m := range list.Models {
		var id struct{ Name, Model string }
		if json.Unmarshal(m, &id) == nil && (id.Name != "" && x.key.AllowsModel(id.Name) || id.Model != "" && x.key.AllowsModel(id.Model)) {
			kept = append(kept, m)
		}
	}
	out, _ := json.Marshal(map[string]any{"models": kept})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(http.StatusOK)
	x.status = http.StatusOK
	x.delivered = true
	pace := newSendPace(http.NewResponseController(w), x.rt.sendTimeout)
	defer pace.done()
	pace.arm()
	if _, err := w.Write(out); err != nil {
		x.errMsg = pace.clientWriteError(err)
	}
	return nil
}
