package gateway

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmproxy/llmproxy/services/gateway/internal/balancer"
)

// poolCollector exposes the current runtime's backend metrics; a reload
// swaps the pool it reads. Safe for concurrent use.
type poolCollector struct {
	cur atomic.Pointer[balancer.Collector]
}

func (p *poolCollector) swap(pool *balancer.Pool) error {
	p.cur.Store(balancer.NewCollector(pool))
	return nil
}

// Describe implements prometheus.Collector.
func (p *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	if c := p.cur.Load(); c != nil {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (p *poolCollector) Collect(ch chan<- prometheus.Metric) {
	if c := p.cur.Load(); c != nil {
		c.Collect(ch)
	}
}
