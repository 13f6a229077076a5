package usage

import (
	"strings"
	"sync"
	"testing"
	"time"
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

// TestCountTokensLongRunsAreLinear: a prompt of one long run of letters,
// of symbols or of spaces is counted in about the time text of its size
// takes. Byte-pair merging such a run whole is quadratic: these 64 KiB of
// one letter took seconds, and a key holder's 10 MiB prompt, estimated when
// the client left mid-stream, held a CPU for hours.
func TestCountTokensLongRunsAreLinear(t *testing.T) {
	CountTokens("load the encoder")
	for _, c := range []struct {
		name string
		run  string
	}{
		{"letters", "a"},
		{"symbols", "!"},
		{"spaces", " "},
		{"wide letters", "é"},
	} {
		t.Run(c.name, func(t *testing.T) {
			text := strings.Repeat(c.run, (64<<10)/len(c.run))
			start := time.Now()
			n := CountTokens(text)
			if d := time.Since(start); d > 1500*time.Millisecond {
				t.Fatalf("64 KiB took %s", d)
			}
			if n <= 0 || n > len(text) {
				t.Fatalf("%d tokens for 64 KiB", n)
			}
		})
	}
	// A run up to maxRun is counted whole, as before.
	if got, want := CountTokens(strings.Repeat("ab", maxRun/2)), len(encoder().EncodeOrdinary(strings.Repeat("ab", maxRun/2))); got != want {
		t.Fatalf("a run of %d bytes: %d tokens, want %d", maxRun, got, want)
	}
}
