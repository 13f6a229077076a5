package usage

import (
	"sync"
	"testing"
)

func TestCountTokens(t *testing.T) {
	tests := []struct {
		text string
		want int
	}{
		{"", 0},
		{"hello world", 2},
		{"Hello, world!", 4},
		{"<|endoftext|>", 7}, // special tokens count as plain text
	}
	for _, tt := range tests {
		if got := CountTokens(tt.text); got != tt.want {
			t.Errorf("CountTokens(%q) = %d, want %d", tt.text, got, tt.want)
		}
	}
}

func TestCountTokensConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if n := CountTokens("the quick brown fox jumps over the lazy dog"); n != 9 {
					t.Errorf("CountTokens = %d, want 9", n)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestEstimatePrompt(t *testing.T) {
	info, err := ParseRequest([]byte(`{"model":"m","messages":[{"role":"system","content":"hello world"},{"role":"user","content":"hello world"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	// "hello world\nhello world" is 5 tokens; 2 messages × 3 + 3 reply.
	if got := EstimatePrompt(info); got != 5+2*3+3 {
		t.Errorf("EstimatePrompt = %d, want 14", got)
	}
	if got := EstimatePrompt(RequestInfo{Prompt: "hello world"}); got != 2 {
		t.Errorf("EstimatePrompt(prompt) = %d, want 2", got)
	}
}
