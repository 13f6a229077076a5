package balancer

import (
	"bytes"
	"math"
	"strconv"
	"strings"
)

// Engine metrics read by the load scraper. vLLM labels its series by
// model, so values of the same name are added up (the cache is the max).
var (
	waitingMetrics = map[string]bool{
		"vllm:num_requests_waiting":  true,
		"tgi_queue_size":             true,
		"llamacpp:requests_deferred": true,
	}
	runningMetrics = map[string]bool{
		"vllm:num_requests_running":    true,
		"llamacpp:requests_processing": true,
	}
	cacheMetrics = map[string]bool{
		"vllm:gpu_cache_usage_perc":     true,
		"vllm:kv_cache_usage_perc":      true, // vLLM ≥ 0.10 name
		"llamacpp:kv_cache_usage_ratio": true,
	}
)

// ParseLoad reads an engine's Prometheus text exposition and returns its
// queue. found is false when no queue metric (waiting or running) appears,
// i.e. the engine cannot be balanced by load. Malformed lines are skipped:
// an engine's odd line must not blind the balancer to the rest. Load.At and
// InFlightAtScrape are left for the caller.
func ParseLoad(data []byte) (l Load, found bool) {
	l.GPUCache = -1
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		name, v, ok := parseMetricLine(string(line))
		if !ok || v < 0 {
			continue
		}
		switch {
		case waitingMetrics[name]:
			l.Waiting += v
			found = true
		case runningMetrics[name]:
			l.Running += v
			found = true
		case cacheMetrics[name]:
			l.GPUCache = max(l.GPUCache, v)
		}
	}
	return l, found
}

// parseMetricLine parses one sample line, `name{labels} value [timestamp]`,
// and returns the metric name and value. Comments, blank lines, malformed
// lines and values that are not finite numbers give ok == false. Negative
// values are ignored by ParseLoad: no queue is shorter than empty.
func parseMetricLine(line string) (name string, value float64, ok bool) {
	line = strings.TrimLeft(line, " \t")
	if line == "" || line[0] == '#' {
		return "", 0, false
	}
	i := 0
	for i < len(line) && isNameChar(line[i], i == 0) {
		i++
	}
	if i == 0 {
		return "", 0, false
	}
	name, rest := line[:i], line[i:]
	if rest != "" && rest[0] == '{' {
		end := labelsEnd(rest)
		if end < 0 {
			return "", 0, false
		}
		rest = rest[end+1:]
	}
	if rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
		return "", 0, false
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 || len(fields) > 2 {
		return "", 0, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return "", 0, false
	}
	return name, v, true
}

func isNameChar(c byte, first bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c == ':':
		return true
	case c >= '0' && c <= '9':
		return !first
	}
	return false
}

// labelsEnd returns the index of the '}' closing the label set that s
// starts with, skipping quoted values with backslash escapes, or -1.
func labelsEnd(s string) int {
	quoted := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == '}':
			return i
		}
	}
	return -1
}
