package publish

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the publisher's Prometheus series.
type metrics struct {
	published prometheus.Counter
	failures  prometheus.Counter
	dropped   prometheus.Counter
	truncated prometheus.Counter
	depth     prometheus.Gauge
	bytes     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_events_published_total",
			Help: "Events acknowledged by JetStream.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_events_publish_failures_total",
			Help: "Event publish attempts that failed or timed out; the events stay in the outbox and are retried.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_events_dropped_total",
			Help: "Events dropped because the outbox and its memory overflow were full, the event could not be encoded, or it did not fit the NATS server's max_payload even with its content cut.",
		}),
		truncated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_events_truncated_total",
			Help: "Events too large for the NATS server's max_payload (or an outbox record), published with their request body or captured response cut; an event sent again after a failed publish counts again.",
		}),
		depth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llmproxy_events_outbox_depth",
			Help: "Events accepted but not yet acknowledged by JetStream (on disk and waiting in memory).",
		}),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llmproxy_events_outbox_bytes",
			Help: "Bytes of outbox segment files on disk.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.published, err = register(reg, m.published)
	if err == nil {
		m.failures, err = register(reg, m.failures)
	}
	if err == nil {
		m.dropped, err = register(reg, m.dropped)
	}
	if err == nil {
		m.truncated, err = register(reg, m.truncated)
	}
	if err == nil {
		m.depth, err = register(reg, m.depth)
	}
	if err == nil {
		m.bytes, err = register(reg, m.bytes)
	}
	return m, err
}

// register registers c, or returns the collector already registered under
// its name so that two publishers in one process share their series.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
