package recorder

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Error kinds, the values of the kind label of llmproxy_recorder_errors_total.
const (
	errPoison = "poison" // an event that cannot be decoded or stored; terminated
	errWrite  = "write"  // a batch transaction failed; its events are retried
	errFetch  = "fetch"  // pulling from the consumer failed
	errAck    = "ack"    // an acknowledgement was not sent; the event comes back and is deduplicated
)

type metrics struct {
	written prometheus.Counter
	batch   prometheus.Histogram
	errors  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmproxy_recorder_events_written_total",
			Help: "Events inserted into PostgreSQL (duplicates of rows already there are not counted).",
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "llmproxy_recorder_batch_seconds",
			Help:    "Duration of one batch transaction in seconds.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmproxy_recorder_errors_total",
			Help: "Recorder failures by kind (poison, write, fetch, ack).",
		}, []string{"kind"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.written = register(reg, m.written, &err)
	m.batch = register(reg, m.batch, &err)
	m.errors = register(reg, m.errors, &err)
	return m, err
}

// register registers c, or returns the collector already registered under
// its name, so that several recorders may share one registerer.
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
