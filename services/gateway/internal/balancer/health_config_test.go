package balancer

import (
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// TestHealthCheckerFromConfigFile: a backend's own health_check_path is
// checked when the file sets no health_check.path (a fleet of Ollama and
// vLLM backends, each with its path), and written enabled: false still
// turns every check off.
func TestHealthCheckerFromConfigFile(t *testing.T) {
	const backends = "backends:\n  - {url: http://vllm:8000, health_check_path: /health}\n  - {url: http://ollama:11434, health_check_path: /api/version}\n"
	for _, tt := range []struct {
		name, yaml string
		want       bool
	}{
		{"own paths only", backends, true},
		{"own paths, checks off", backends + "health_check: {enabled: false}\n", false},
		{"no path anywhere", "backends: [{url: http://vllm:8000}]\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tt.yaml), "c.yaml")
			if err != nil {
				t.Fatal(err)
			}
			p := mustPool(t, PoolConfig{Backends: cfg.Backends, HealthCheck: cfg.HealthCheck})
			if got := NewHealthChecker(p, cfg.HealthCheck, nil).Enabled(); got != tt.want {
				t.Errorf("health checks enabled = %v, want %v", got, tt.want)
			}
		})
	}
}
