package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
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
			// A model only the config lists is owned by its backend,
			// named unless the backends' names are kept from clients.
			owner := up.Name
			if !x.rt.cfg.Server.PublicStatusOn() {
				owner = "llmproxy"
			}
			if up.Healthy() {
				// A backend marked down serves none of them; one only
				// ejected is still tried when nothing else is left.
				for m := range up.Models {
					add(up, modelEntry{ID: m, OwnedBy: owner})
				}
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

// A model list waits up to listWait for its backends. One that has not
// answered by then (a hung or slow backend) is listed as it last answered,
// within listKeep, while it is still asked (up to listTimeout, once at a
// time), so that it holds no list for longer than listWait.
const (
	listWait    = 2 * time.Second
	listTimeout = 10 * time.Second
	listKeep    = 10 * time.Minute
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
	ups := x.rt.pool.Upstreams()
	g.lists.prune(ups)
	fetches := make([]*listFetch, len(ups))
	for i, up := range ups {
		if up.Healthy() {
			// Not only an available one: a backend only ejected is
			// still tried when nothing else is left (see servable).
			fetches[i] = g.lists.fetch(g, up, path, limit)
		}
	}
	wait := time.NewTimer(listWait)
	defer wait.Stop()
	replies := make([][]byte, len(ups))
	for i, f := range fetches {
		if f == nil {
			continue
		}
		select {
		case <-f.done:
			replies[i] = g.lists.latest(f, ups[i], path)
			continue
		case <-wait.C:
		case <-r.Context().Done():
		}
		if r.Context().Err() != nil {
			// The client left while the backends were asked.
			g.abandoned(r.Context(), w, x)
			g.finish(r.Context(), x)
			g.observe(x)
			return
		}
		// Past listWait: what each backend still asked last answered.
		for j := i; j < len(fetches); j++ {
			if fetches[j] != nil {
				replies[j] = g.lists.latest(fetches[j], ups[j], path)
			}
		}
		break
	}
	list, n, e := merge(x, ups, replies)
	if n == 0 && !x.rt.pool.AnyHealthy() {
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

// listCache holds each backend's last list of each path, and the one
// request for it in flight.
type listCache struct {
	mu sync.Mutex
	m  map[listKey]*listEntry
}

type listKey struct {
	up   *balancer.Upstream
	path string
}

type listEntry struct {
	body    []byte // the last 200 reply; nil after any other answer
	at      time.Time
	pending *listFetch
}

// listFetch is one request for a backend's list: body is its 200 reply
// (nil for another answer or none) and answered whether the backend
// answered, both set before done is closed.
type listFetch struct {
	done     chan struct{}
	body     []byte
	answered bool
}

// fetch asks up for its list at path, or joins the request for it in
// flight. The request is the gateway's, not the client's: a client that
// leaves does not cancel it, and its answer serves the next list.
func (c *listCache) fetch(g *Gateway, up *balancer.Upstream, path string, limit int64) *listFetch {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[listKey]*listEntry{}
	}
	k := listKey{up, path}
	e := c.m[k]
	if e == nil {
		e = &listEntry{}
		c.m[k] = e
	}
	if e.pending != nil {
		return e.pending
	}
	f := &listFetch{done: make(chan struct{})}
	e.pending = f
	go func() {
		ctx, cancel := context.WithTimeout(g.stop, listTimeout)
		body, answered := g.backendList(ctx, up, path, limit)
		cancel()
		c.mu.Lock()
		if answered {
			e.body, e.at = body, time.Now()
		}
		e.pending = nil
		c.mu.Unlock()
		f.body, f.answered = body, answered
		close(f.done)
	}()
	return f
}

// latest is f's answer if it has come, else (not yet, or the backend did
// not answer: a timeout, a connection refused) up's last list at path if it
// is recent enough.
func (c *listCache) latest(f *listFetch, up *balancer.Upstream, path string) []byte {
	select {
	case <-f.done:
		if f.answered {
			return f.body
		}
	default:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[listKey{up, path}]; e != nil && e.body != nil && time.Since(e.at) < listKeep {
		return e.body
	}
	return nil
}

// prune forgets the lists of backends that are no longer ups (a reload
// replaced or removed them).
func (c *listCache) prune(ups []*balancer.Upstream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.m {
		if !slices.Contains(ups, k.up) {
			delete(c.m, k)
		}
	}
}

// backendList asks one backend for its model list at path: its 200 reply,
// or nil for a backend that answered otherwise (answered) or failed to
// answer (not answered).
func (g *Gateway) backendList(ctx context.Context, up *balancer.Upstream, path string, limit int64) (body []byte, answered bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.URL.JoinPath(path).String(), nil)
	if err != nil {
		return nil, false
	}
	up.SetHeaders(req)
	resp, err := up.Transport.RoundTrip(req)
	if err != nil {
		return nil, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, true
	}
	if enc := resp.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return nil, true
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, false
	}
	if int64(len(body)) > limit {
		return nil, true
	}
	if body == nil {
		body = []byte{}
	}
	return body, true
}
