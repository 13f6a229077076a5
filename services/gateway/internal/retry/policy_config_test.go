package retry

import (
	"testing"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// TestPolicyFromConfigFile: the policy means what routing.retry says in
// the file: max_retries: 0 is no retry, an absent max_retries the default,
// an absent on every kind.
func TestPolicyFromConfigFile(t *testing.T) {
	tests := []struct {
		name, retry string
		maxRetries  int
		retry503    bool
	}{
		{"max_retries 0", "{enabled: true, max_retries: 0}", 0, false},
		{"max_retries absent", "{enabled: true}", DefaultMaxRetries, true},
		{"max_retries 1, 5xx only", "{enabled: true, max_retries: 1, on: [5xx]}", 1, true},
		{"429 only", "{enabled: true, on: ['429']}", DefaultMaxRetries, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte("backends: [{url: http://a:1}]\nrouting: {retry: "+tt.retry+"}\n"), "c.yaml")
			if err != nil {
				t.Fatal(err)
			}
			p := NewPolicy(cfg.Routing.Retry)
			if p.MaxRetries() != tt.maxRetries {
				t.Errorf("MaxRetries = %d, want %d", p.MaxRetries(), tt.maxRetries)
			}
			if got := p.ShouldRetry(0, 503, nil); got != tt.retry503 {
				t.Errorf("ShouldRetry(0, 503) = %v, want %v", got, tt.retry503)
			}
		})
	}
}
