package balancer

import (
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/prometheus/client_golang/prometheus"
)

func TestCollector(t *testing.T) {
	clk := newFakeClock()
	p := mustPool(t, PoolConfig{Backends: backends(2), Clock: clk, HealthCheck: config.HealthCheck{FailureThreshold: 1}})
	p.ByName("b0").Acquire()
	p.ByName("b0").Acquire()
	p.ByName("b1").ReportFailure(clk.Now())
	reg := prometheus.NewPedanticRegistry()
	if err := RegisterMetrics(reg, p); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + "{" + m.GetLabel()[0].GetValue() + "}"
			if g := m.GetGauge(); g != nil {
				got[key] = g.GetValue()
			}
			if c := m.GetCounter(); c != nil {
				got[key] = c.GetValue()
			}
		}
	}
	want := map[string]float64{
		"llmproxy_backend_up{b0}":              1,
		"llmproxy_backend_up{b1}":              0,
		"llmproxy_backend_inflight{b0}":        2,
		"llmproxy_backend_inflight{b1}":        0,
		"llmproxy_backend_ejections_total{b0}": 0,
		"llmproxy_backend_ejections_total{b1}": 1,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d series, want %d: %v", len(got), len(want), got)
	}
}
