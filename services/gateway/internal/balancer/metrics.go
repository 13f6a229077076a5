package balancer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the pool's upstreams to Prometheus, reading their
// atomic state at scrape time:
//
//	llmproxy_backend_up{backend}               1 when available, else 0
//	llmproxy_backend_inflight{backend}         requests in flight
//	llmproxy_backend_ejections_total{backend}  passive ejections
type Collector struct {
	pool      *Pool
	up        *prometheus.Desc
	inflight  *prometheus.Desc
	ejections *prometheus.Desc
}

// NewCollector returns a Collector for pool; register it once.
func NewCollector(pool *Pool) *Collector {
	l := []string{"backend"}
	return &Collector{
		pool:      pool,
		up:        prometheus.NewDesc("llmproxy_backend_up", "Whether the backend is available (healthy and not ejected).", l, nil),
		inflight:  prometheus.NewDesc("llmproxy_backend_inflight", "Requests in flight to the backend.", l, nil),
		ejections: prometheus.NewDesc("llmproxy_backend_ejections_total", "Times the backend was ejected after consecutive failures.", l, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.inflight
	ch <- c.ejections
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	now := c.pool.clock.Now()
	for _, u := range c.pool.upstreams {
		up := 0.0
		if u.Available(now) {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, u.Name)
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(u.InFlight()), u.Name)
		ch <- prometheus.MustNewConstMetric(c.ejections, prometheus.CounterValue, float64(u.Ejections()), u.Name)
	}
}

// RegisterMetrics registers a Collector for pool with reg.
func RegisterMetrics(reg prometheus.Registerer, pool *Pool) error {
	if err := reg.Register(NewCollector(pool)); err != nil {
		return fmt.Errorf("register backend metrics: %w", err)
	}
	return nil
}
