package notifier

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Delivery outcomes, the values of the outcome label of
// llmproxy_webhook_deliveries_total.
const (
	outcomeSuccess    = "success"
	outcomeRetry      = "retry"
	outcomeDeadLetter = "dead_letter"
	// outcomeDLQError: the dead letter could not be published; the event is
	// retried.
	outcomeDLQError = "dlq_error"
)

// metrics are the notifier's Prometheus collectors. The two upstream names
// keep their label-free shape; the labelled ones are new.
type metrics struct {
	success    prometheus.Counter
	failure    prometheus.Counter
	deliveries *prometheus.CounterVec
	skipped    *prometheus.CounterVec
	retries    *prometheus.CounterVec
	dlq        *prometheus.CounterVec
	seconds    *prometheus.HistogramVec
	dlqDepth   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		success: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_webhook_success_total",
			Help: "Events delivered to a webhook endpoint (2xx), all endpoints.",
		}),
		failure: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_webhook_failure_total",
			Help: "Events that could not be delivered to a webhook endpoint and were dead-lettered, all endpoints.",
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_webhook_deliveries_total",
			Help: "Webhook delivery attempts by endpoint and outcome (success, retry, dead_letter, dlq_error).",
		}, []string{"endpoint", "outcome"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_webhook_skipped_total",
			Help: "Events not sent to an endpoint, by endpoint: those of requests refused without a valid key (key_id unauthenticated), to endpoints without unauthenticated: true.",
		}, []string{"endpoint"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_webhook_retries_total",
			Help: "Webhook delivery attempts that failed and were scheduled for another attempt.",
		}, []string{"endpoint"}),
		dlq: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_webhook_dlq_total",
			Help: "Events written to the LLMPROXY_DLQ stream, by endpoint.",
		}, []string{"endpoint"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmproxy_webhook_delivery_seconds",
			Help:    "Duration of one webhook delivery attempt in seconds, from request to response headers.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"endpoint"}),
		dlqDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llmproxy_webhook_dlq_depth",
			Help: "Dead letters currently held in the LLMPROXY_DLQ stream (messages), refreshed periodically.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	// Several notifiers may share one registerer (tests, or a process with
	// more than one); they then share the collectors already registered.
	var err error
	m.success = register(reg, m.success, &err)
	m.failure = register(reg, m.failure, &err)
	m.deliveries = register(reg, m.deliveries, &err)
	m.skipped = register(reg, m.skipped, &err)
	m.retries = register(reg, m.retries, &err)
	m.dlq = register(reg, m.dlq, &err)
	m.seconds = register(reg, m.seconds, &err)
	m.dlqDepth = register(reg, m.dlqDepth, &err)
	return m, err
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C, errp *error) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	*errp = errors.Join(*errp, err)
	return c
}
