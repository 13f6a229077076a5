package meter

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the meter's Prometheus series.
type metrics struct {
	applied     prometheus.Counter
	duplicate   prometheus.Counter
	skipped     prometheus.Counter
	applyErrors prometheus.Counter
	poison      prometheus.Counter
	batch       prometheus.Histogram
	lag         prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_meter_events_applied_total",
			Help: "Events newly recorded in the ledger.",
		}),
		duplicate: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_meter_events_duplicate_total",
			Help: "Events delivered again whose request id the ledger already had; they changed nothing.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_meter_events_skipped_total",
			Help: "Events of requests refused before a backend (no tokens used, none reserved): nothing to record, acked. Applied, duplicate, skipped and poison add up to the events the meter consumed.",
		}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_meter_apply_errors_total",
			Help: "Failed ledger writes; their events are redelivered.",
		}),
		poison: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_meter_events_poison_total",
			Help: "Events that can never be applied (undecodable or invalid); terminated, not redelivered.",
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "llmproxy_meter_batch_seconds",
			Help:    "Time to apply and ack one batch of events.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llmproxy_meter_lag",
			Help: "Events in the stream not yet applied by the meters: not yet delivered to their consumer, or delivered and not acked (num_pending + num_ack_pending).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.applied, err = register(reg, m.applied)
	if err == nil {
		m.duplicate, err = register(reg, m.duplicate)
	}
	if err == nil {
		m.skipped, err = register(reg, m.skipped)
	}
	if err == nil {
		m.applyErrors, err = register(reg, m.applyErrors)
	}
	if err == nil {
		m.poison, err = register(reg, m.poison)
	}
	if err == nil {
		m.batch, err = register(reg, m.batch)
	}
	if err == nil {
		m.lag, err = register(reg, m.lag)
	}
	return m, err
}

// register registers c, or returns the collector already registered under
// its name so that two meters in one process share their series.
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
