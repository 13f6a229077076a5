package usage

import (
	"math"
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
	if got := EstimatePrompt(info, 0); got != 5+2*3+3 {
		t.Errorf("EstimatePrompt = %d, want 14", got)
	}
	if got := EstimatePrompt(RequestInfo{Prompt: "hello world"}, 0); got != 2 {
		t.Errorf("EstimatePrompt(prompt) = %d, want 2", got)
	}
	// A prompt of token ids counts one token per id; an image counts the
	// configured allowance, as in the reservation.
	info, err = ParseRequest([]byte(`{"model":"m","input":[[1,2,3,4,5,6,7,8,9,10],[11,12,13]]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := EstimatePrompt(info, 0); got != 13 {
		t.Errorf("EstimatePrompt(token ids) = %d, want 13", got)
	}
	info, err = ParseRequest([]byte(`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hello world"},{"type":"image_url","image_url":{"url":"data:,"}},{"type":"image_url","image_url":{"url":"data:,"}}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := EstimatePrompt(info, 100); got != 2+3+3+200 {
		t.Errorf("EstimatePrompt(two images at 100) = %d, want 208", got)
	}
	if got := EstimatePrompt(RequestInfo{Images: 3, PromptTokenIDs: 5}, math.MaxInt64/2); got != math.MaxInt64 {
		t.Errorf("EstimatePrompt(images past int64) = %d, want MaxInt64", got)
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

// TestCountTokensHugeTextIsSampled: a text of many MiBs is estimated from
// samples of at most maxExact bytes in all, within a few percent of its
// count, instead of counted token by token (0.7 s of a CPU per MiB, spent
// before the reply's last bytes went out).
func TestCountTokensHugeTextIsSampled(t *testing.T) {
	prose := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 1000)
	code := strings.Repeat("for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }\\n", 1000)
	unit := prose + code + "Ünïcödé wörds hère. "
	reps := (8<<20)/len(unit) + 1
	text := strings.Repeat(unit, reps)
	exact := reps * countExact(unit) // within a token per unit
	counted := 0
	orig := countExact
	countExact = func(s string) int { counted += len(s); return orig(s) }
	defer func() { countExact = orig }()
	got := CountTokens(text)
	if counted > maxExact {
		t.Errorf("counted %d bytes of a %d-byte text; want at most %d", counted, len(text), maxExact)
	}
	if diff := float64(got-exact) / float64(exact); diff > 0.05 || diff < -0.05 {
		t.Errorf("estimate %d for %d tokens (%.1f%% off)", got, exact, 100*diff)
	}
}

// TestQuickEstimatePrompt: the text at four bytes a token (rounded up),
// with EstimatePrompt's allowances for messages, token ids and images.
func TestQuickEstimatePrompt(t *testing.T) {
	info := RequestInfo{Prompt: strings.Repeat("x", 41), Messages: 2, PromptTokenIDs: 5, Images: 2}
	if got, want := QuickEstimatePrompt(info, 100), int64(11+2*tokensPerMessage+tokensPerReply+5+200); got != want {
		t.Fatalf("QuickEstimatePrompt = %d, want %d", got, want)
	}
	if got := QuickEstimatePrompt(RequestInfo{Images: 1 << 62}, 8); got != math.MaxInt64 {
		t.Fatalf("QuickEstimatePrompt of 2^62 images at 8 = %d, want it saturated", got)
	}
}
