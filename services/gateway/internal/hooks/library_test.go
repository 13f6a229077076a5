package hooks

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLogNamesScriptLine(t *testing.T) {
	var out syncBuffer
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := newEngine(t, "function on_route(req)\n  llmproxy.log('warn', 'no pool')\n  print('a', 1)\nend", Options{Logger: log})
	if _, err := e.OnRoute(context.Background(), &Request{}); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{`level=WARN msg="no pool" at=test.lua:2`, `level=DEBUG msg="a\t1" at=test.lua:3`} {
		if !strings.Contains(got, want) {
			t.Errorf("log output %q lacks %q", got, want)
		}
	}
}
