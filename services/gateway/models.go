package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
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
	g.serveList(w, r, "/v1/models", maxModelsBody, func(x *exchange, ups []*balancer.Upstream, replies [][]byte) (any, int, *apierr.Error) {
		// By config.ModelKey: Ollama's name and name:latest are listed
		// once, as first seen.
		seen := map[string]modelEntry{}
		add := func(up *balancer.Upstream, m modelEntry) {
			if m.ID == "" || !x.listsModel(up, m.ID) {
				return
			}
			if m.Object == "" {
				m.Object = "model"
			}
			if k := config.ModelKey(m.ID); seen[k].ID == "" {
				seen[k] = m
			}
		}
		for i, up := range ups {
			for m := range up.Models {
				add(up, modelEntry{ID: m, OwnedBy: up.Name})
			}
			var out struct {
				Data []modelEntry `json:"data"`
			}
			if replies[i] != nil && json.Unmarshal(replies[i], &out) == nil {
				for _, m := range out.Data {
					add(up, m)
				}
			}
		}
		list := make([]modelEntry, 0, len(seen))
		for _, m := range seen {
			list = append(list, m)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
		return map[string]any{"object": "list", "data": list}, len(list), nil
	})
}

// serveOllamaList answers Ollama's model lists, GET /api/tags (the models
// there are) and GET /api/ps (those loaded now), with the union of every
// available backend's list, as serveModels does /v1/models: each model
// once (by name, as the first backend in the config's order lists it,
// fields and all), in the backends' order, leaving out those no request
// could be routed to and, for a key restricted to some models, the others.
// A backend that is no Ollama (a 404 there) adds nothing.
func (g *Gateway) serveOllamaList(w http.ResponseWriter, r *http.Request) {
	g.serveList(w, r, r.URL.Path, maxTagsBody, func(x *exchange, ups []*balancer.Upstream, replies [][]byte) (any, int, *apierr.Error) {
		seen := map[string]bool{}
		kept := []json.RawMessage{}
		for i, up := range ups {
			var list struct {
				Models []json.RawMessage `json:"models"`
			}
			if replies[i] == nil || json.Unmarshal(replies[i], &list) != nil {
				continue
			}
			for _, m := range list.Models {
				var id struct{ Name, Model string }
				if json.Unmarshal(m, &id) != nil || id.Name == "" || seen[config.ModelKey(id.Name)] {
					continue
				}
				if x.listsModel(up, id.Name) || id.Model != "" && x.listsModel(up, id.Model) {
					seen[config.ModelKey(id.Name)] = true
					kept = append(kept, m)
				}
			}
		}
		return map[string]any{"models": kept}, len(kept), nil
	})
}

// serveOllamaVersion answers Ollama's GET /api/version with the version
// the first backend in the config's order that answers it gives: in a
// fleet that mixes engines, one that is no Ollama (a 404 there) is passed
// over.
func (g *Gateway) serveOllamaVersion(w http.ResponseWriter, r *http.Request) {
	g.serveList(w, r, "/api/version", 64<<10, func(_ *exchange, _ []*balancer.Upstream, replies [][]byte) (any, int, *apierr.Error) {
		for _, b := range replies {
			var v struct {
				Version string `json:"version"`
			}
			if b != nil && json.Unmarshal(b, &v) == nil && v.Version != "" {
				return json.RawMessage(b), 1, nil
			}
		}
		return nil, 0, apierr.BadGateway("no backend answered /api/version: none is an Ollama")
	})
}

// listsModel reports whether x's model list shows model, as up reports
// it: one x's key may use, that up serves, and that some backend with a
// weight serves (a model only standbys serve is answered 404
// model_not_found, so it is not listed either).
func (x *exchange) listsModel(up *balancer.Upstream, model string) bool {
	if x.key != nil && !x.key.AllowsModel(model) {
		return false
	}
	return up.Serves(model) && x.rt.pool.HasModel(model)
}

// The largest model list read from one backend (Ollama's list of a
// thousand models is about 1 MB).
const (
	maxModelsBody = 4 << 20
	maxTagsBody   = 4 << 20
)

// serveList answers a model list (GET path) as merge makes it, with the
// number of its models, from the 200 replies of every available backend,
// asked at once (nil for a backend that failed to answer, or was not asked:
// not available), after the request is authenticated and admitted as any
// other. An empty list while no backend is available is a 503; merge's
// error, that error.
func (g *Gateway) serveList(w http.ResponseWriter, r *http.Request, path string, limit int64, merge func(x *exchange, ups []*balancer.Upstream, replies [][]byte) (any, int, *apierr.Error)) {
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
	ups := x.rt.pool.Upstreams()
	replies := make([][]byte, len(ups))
	var wg sync.WaitGroup
	now := time.Now()
	for i, up := range ups {
		if up.Available(now) {
			wg.Go(func() { replies[i] = g.backendList(ctx, up, path, limit) })
		}
	}
	wg.Wait()
	if r.Context().Err() != nil {
		// The client left while the backends were asked.
		g.abandoned(r.Context(), w, x)
		g.finish(r.Context(), x)
		g.observe(x)
		return
	}
	list, n, e := merge(x, ups, replies)
	if n == 0 && !x.rt.pool.AnyAvailable() {
		e = apierr.Unavailable("no_backend_available", "no backend is available; try again shortly")
	}
	if e != nil {
		g.failForward(w, x, e)
		g.finish(r.Context(), x)
		g.observe(x)
		return
	}
	body, _ := json.Marshal(list)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	x.status = http.StatusOK
	_, _ = w.Write(body)
	g.finish(r.Context(), x)
	g.observe(x)
}

// backendList asks one backend for its model list at path; a backend that
// fails to answer, or answers other than 200, contributes none (nil).
func (g *Gateway) backendList(ctx context.Context, up *balancer.Upstream, path string, limit int64) []byte {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.URL.JoinPath(path).String(), nil)
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
	if enc := resp.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil || int64(len(body)) > limit {
		return nil
	}
	if body == nil {
		body = []byte{}
	}
	return body
}
