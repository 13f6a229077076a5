package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// newTestServer starts a mock with default knobs changed by mutate.
func newTestServer(t *testing.T, mutate func(*options)) (*server, *httptest.Server) {
	t.Helper()
	o := options{knobs: defaultKnobs()}
	o.Tokens = 3
	if mutate != nil {
		mutate(&o)
	}
	if err := o.validate(); err != nil {
		t.Fatalf("options: %v", err)
	}
	s := newServer(o)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

func post(t *testing.T, ts *httptest.Server, path, body string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	return m
}

// sseEvent is one server-sent event.
type sseEvent struct {
	name string
	data string
}

// parseSSE splits an SSE body into events; it accepts "data:" with and
// without the space, as clients do.
func parseSSE(t *testing.T, b []byte) []sseEvent {
	t.Helper()
	var evs []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.data != "" || cur.name != "" {
				evs = append(evs, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "event:"):
			cur.name = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			cur.data = strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	if cur.data != "" {
		t.Fatalf("unterminated SSE event %q", cur.data)
	}
	return evs
}

// checkSentNS asserts the event carries a plausible, non-decreasing
// mock_sent_ns and returns it.
func checkSentNS(t *testing.T, m map[string]any, prev int64) int64 {
	t.Helper()
	v, ok := m["mock_sent_ns"].(float64)
	if !ok {
		t.Fatalf("event without mock_sent_ns: %v", m)
	}
	ns := int64(v)
	if ns < prev-int64(time.Millisecond) || ns > time.Now().Add(time.Minute).UnixNano() {
		t.Fatalf("mock_sent_ns %d out of order or range (prev %d)", ns, prev)
	}
	return ns
}

// metric reads one unlabelled or model-labelled series from /metrics.
func metric(t *testing.T, ts *httptest.Server, name string) float64 {
	t.Helper()
	resp, err := ts.Client().Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, val, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(series, '{'); i >= 0 {
			series = series[:i]
		}
		if series == name {
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not found in:\n%s", name, b)
	return 0
}

// waitMetric polls /metrics until name reaches want, failing after 5 s.
func waitMetric(t *testing.T, ts *httptest.Server, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := metric(t, ts, name)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", name, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
