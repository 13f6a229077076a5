package main

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
)

// metrics writes Prometheus text: the vLLM gauges a load-aware router
// reads (vllm:num_requests_waiting and vllm:gpu_cache_usage_perc from
// the load settings, vllm:num_requests_running from the real in-flight
// count), and mock_* series that let tests see what the backend saw.
func (s *server) metrics(w http.ResponseWriter, _ *http.Request) {
	b := make([]byte, 0, 2048)
	label := appendJSONString(nil, s.base.Model) // a quoted, escaped label value
	gauge := func(name, help string, v float64) {
		b = append(b, "# HELP "...)
		b = append(b, name...)
		b = append(b, ' ')
		b = append(b, help...)
		b = append(b, "\n# TYPE "...)
		b = append(b, name...)
		b = append(b, " gauge\n"...)
		b = append(b, name...)
		b = append(b, `{model_name=`...)
		b = append(b, label...)
		b = append(b, "} "...)
		b = appendPromFloat(b, v)
		b = append(b, '\n')
	}
	plain := func(name, typ, help string, v int64) {
		b = append(b, "# HELP "...)
		b = append(b, name...)
		b = append(b, ' ')
		b = append(b, help...)
		b = append(b, "\n# TYPE "...)
		b = append(b, name...)
		b = append(b, ' ')
		b = append(b, typ...)
		b = append(b, '\n')
		b = append(b, name...)
		b = append(b, ' ')
		b = appendInt(b, int(v))
		b = append(b, '\n')
	}
	inflight := s.inflight.Load()
	gauge("vllm:num_requests_running", "Number of requests currently running on GPU.", float64(inflight))
	gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", float64(s.waiting.Load()))
	gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
		math.Float64frombits(s.gpuCache.Load()))
	plain("mock_requests_inflight", "gauge", "Inference requests being served now.", inflight)
	plain("mock_requests_max_inflight", "gauge", "Highest mock_requests_inflight since start or reset.", s.maxInflight.Load())
	plain("mock_requests_total", "counter", "Inference requests received.", s.total.Load())
	plain("mock_cancelled_total", "counter", "Requests whose client left before the reply was complete.", s.cancelled.Load())
	plain("mock_dropped_total", "counter", "Streams whose connection was dropped by --drop-after.", s.dropped.Load())
	plain("mock_errors_injected_total", "counter", "Requests failed by --error-rate.", s.injected.Load())
	w.Header()["Content-Type"] = []string{"text/plain; version=0.0.4; charset=utf-8"}
	_, _ = w.Write(b)
}

// loadRequest is the body of POST /mock/load; absent fields keep their
// value.
type loadRequest struct {
	Waiting  *int     `json:"waiting"`
	GPUCache *float64 `json:"gpu_cache"`
}

func (s *server) setLoad(w http.ResponseWriter, r *http.Request) {
	var req loadRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		writeError(w, famOpenAI, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return
	}
	if req.Waiting != nil && *req.Waiting < 0 {
		writeError(w, famOpenAI, http.StatusBadRequest, "waiting: must be >= 0")
		return
	}
	if req.GPUCache != nil && (*req.GPUCache < 0 || *req.GPUCache > 1) {
		writeError(w, famOpenAI, http.StatusBadRequest, "gpu_cache: must be within 0..1")
		return
	}
	if req.Waiting != nil {
		s.waiting.Store(int64(*req.Waiting))
	}
	if req.GPUCache != nil {
		s.gpuCache.Store(math.Float64bits(*req.GPUCache))
	}
	w.WriteHeader(http.StatusNoContent)
}

// reset zeroes the counters; the high-water mark restarts at the current
// in-flight count. Load settings are kept.
func (s *server) reset(w http.ResponseWriter, _ *http.Request) {
	s.total.Store(0)
	s.cancelled.Store(0)
	s.dropped.Store(0)
	s.injected.Store(0)
	s.maxInflight.Store(s.inflight.Load())
	w.WriteHeader(http.StatusNoContent)
}
