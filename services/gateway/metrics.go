package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus series. The first four keep the
// upstream project's names and labels.
type metrics struct {
	requests   *prometheus.CounterVec
	latency    prometheus.Histogram
	ttft       prometheus.Histogram
	tokens     *prometheus.CounterVec
	rejections *prometheus.CounterVec
	luaErrors  *prometheus.CounterVec
	prompt     prometheus.Counter
	completion prometheus.Counter
	recovered  prometheus.Counter
	// unrecorded counts refusals whose events the refusal budget left
	// unpublished.
	unrecorded prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, inflight func() int64) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_requests_total",
			Help: "Requests served by the gateway, by path, stream (true/false), backend and HTTP status.",
		}, []string{"path", "stream", "backend", "status"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "llmproxy_latency_ms",
			Help:    "Request latency in milliseconds, from arrival to the last byte sent.",
			Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000},
		}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "llmproxy_ttft_ms",
			Help:    "Time to first byte of the response body in milliseconds (time to first token for streams), of 2xx replies.",
			Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000},
		}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_usage_tokens_total",
			Help: "Tokens served, by type (prompt, completion).",
		}, []string{"type"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_admission_rejections_total",
			Help: "Requests refused before reaching a backend, by reason.",
		}, []string{"reason"}),
		luaErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_lua_errors_total",
			Help: "Lua hook calls that failed, by hook (on_auth, on_request, on_route, on_response, on_complete) and reason (error, timeout).",
		}, []string{"hook", "reason"}),
		recovered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_streams_recovered_total",
			Help: "Streams a previous process on this data directory left unfinished (it was killed mid-stream), whose events were published from the in-flight journal at start.",
		}),
		unrecorded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_refusal_events_unpublished_total",
			Help: "Requests refused before admission or any backend whose events were not published: past logging.refusal_events_per_second for their key id.",
		}),
	}
	m.prompt = m.tokens.WithLabelValues("prompt")
	m.completion = m.tokens.WithLabelValues("completion")
	inflightGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "llmproxy_inflight_requests",
		Help: "Requests being served right now.",
	}, func() float64 { return float64(inflight()) })
	reg.MustRegister(m.requests, m.latency, m.ttft, m.tokens, m.rejections, m.luaErrors, m.recovered, m.unrecorded, inflightGauge)
	return m
}
