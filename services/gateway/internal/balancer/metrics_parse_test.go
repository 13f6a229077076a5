package balancer

import (
	"math"
	"testing"
)

const vllmMetrics = `# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="qwen2.5-72b"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="qwen2.5-72b"} 3.0
vllm:num_requests_waiting{model_name="qwen2.5-7b"} 2.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 40
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="qwen2.5-72b"} 0.42
vllm:gpu_cache_usage_perc{model_name="qwen2.5-7b"} 0.17
`

func TestParseLoad(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		want  Load
		found bool
	}{
		{"vllm", vllmMetrics, Load{Waiting: 5, Running: 12, GPUCache: 0.42}, true},
		{"tgi", "# TYPE tgi_queue_size gauge\ntgi_queue_size 7\ntgi_batch_current_size 4\n", Load{Waiting: 7, GPUCache: -1}, true},
		{"llama.cpp", "llamacpp:requests_processing 2\nllamacpp:requests_deferred 9\nllamacpp:kv_cache_usage_ratio 0.5\n", Load{Waiting: 9, Running: 2, GPUCache: 0.5}, true},
		{"crlf, tabs and timestamps", "vllm:num_requests_waiting{a=\"b\"}\t4 1700000000000\r\n", Load{Waiting: 4, GPUCache: -1}, true},
		{"labels with braces, spaces and escapes", `vllm:num_requests_waiting{path="/a b}",q="x\"}y"} 6` + "\n", Load{Waiting: 6, GPUCache: -1}, true},
		{"no known metrics", "go_goroutines 12\nprocess_open_fds 3\n", Load{GPUCache: -1}, false},
		{"cache alone is not a queue", "vllm:gpu_cache_usage_perc 0.9\n", Load{GPUCache: 0.9}, false},
		{"empty", "", Load{GPUCache: -1}, false},
		{"garbage lines skipped", "tgi_queue_size\ntgi_queue_size abc\n{x} 1\ntgi_queue_size{ 3\ntgi_queue_size NaN\ntgi_queue_size +Inf\ntgi_queue_size 1 2 3\ntgi_queue_size 2\n", Load{Waiting: 2, GPUCache: -1}, true},
		{"no trailing newline", "tgi_queue_size 1e1", Load{Waiting: 10, GPUCache: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found := ParseLoad([]byte(tt.in))
			if found != tt.found || got != tt.want {
				t.Fatalf("ParseLoad = %+v, %v; want %+v, %v", got, found, tt.want, tt.found)
			}
		})
	}
}

func TestParseMetricLine(t *testing.T) {
	tests := []struct {
		line string
		name string
		v    float64
		ok   bool
	}{
		{"a 1", "a", 1, true},
		{"  a:b_c{x=\"1\"} -2.5", "a:b_c", -2.5, true},
		{"a{} 3 123", "a", 3, true},
		{"# a 1", "", 0, false},
		{"", "", 0, false},
		{"1a 1", "", 0, false},
		{"a{x=\"1\" 1", "", 0, false},
		{"a{x=\"1\"}1", "", 0, false},
		{"a", "", 0, false},
		{"a 0x", "", 0, false},
	}
	for _, tt := range tests {
		name, v, ok := parseMetricLine(tt.line)
		if name != tt.name || v != tt.v || ok != tt.ok {
			t.Errorf("parseMetricLine(%q) = %q, %v, %v; want %q, %v, %v", tt.line, name, v, ok, tt.name, tt.v, tt.ok)
		}
	}
}

func FuzzParseMetrics(f *testing.F) {
	f.Add([]byte(vllmMetrics))
	f.Add([]byte("tgi_queue_size 3\n"))
	f.Add([]byte("llamacpp:requests_deferred{a=\"}\\\"\"} 1 2\n"))
	f.Add([]byte("{\n}\x00 \t#"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, found := ParseLoad(data)
		for _, v := range []float64{l.Waiting, l.Running, l.GPUCache} {
			if math.IsNaN(v) {
				t.Fatalf("NaN in %+v", l)
			}
		}
		if !found && (l.Waiting != 0 || l.Running != 0) {
			t.Fatalf("queue values without found: %+v", l)
		}
		for _, line := range splitLines(data) {
			name, v, ok := parseMetricLine(line)
			if ok && (name == "" || math.IsNaN(v) || math.IsInf(v, 0)) {
				t.Fatalf("parseMetricLine(%q) = %q, %v", line, name, v)
			}
			if !ok && name != "" {
				t.Fatalf("parseMetricLine(%q) named %q without ok", line, name)
			}
		}
	})
}

func splitLines(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == '\n' {
			out = append(out, string(b[start:i]))
			start = i + 1
		}
	}
	return append(out, string(b[start:]))
}
