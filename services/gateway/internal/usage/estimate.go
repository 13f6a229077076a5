package usage

import (
	"math"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/pkoukk/tiktoken-go"
	tiktoken_loader "github.com/pkoukk/tiktoken-go-loader"
)

// Encoding is the tokenizer used for estimates. Self-hosted models have their
// own tokenizers; cl100k_base is a neutral, offline stand-in whose counts are
// close enough for quotas when a backend reports nothing.
const Encoding = "cl100k_base"

// Per OpenAI's counting guide: every message costs about 3 tokens of
// framing, and every reply is primed with 3 more.
const (
	tokensPerMessage = 3
	tokensPerReply   = 3
)

var (
	encOnce sync.Once
	enc     *tiktoken.Tiktoken
)

// encoder loads the embedded BPE ranks once. Loading takes a few hundred
// milliseconds; the first CountTokens pays it.
func encoder() *tiktoken.Tiktoken {
	encOnce.Do(func() {
		tiktoken.SetBpeLoader(tiktoken_loader.NewOfflineLoader())
		e, err := tiktoken.GetEncoding(Encoding)
		if err == nil {
			enc = e
		}
	})
	return enc
}

// CountTokens returns the number of cl100k_base tokens in text. Special
// tokens in text are counted as ordinary text. If the tokenizer cannot be
// loaded it falls back to one token per four bytes. CountTokens is safe for
// concurrent use.
func CountTokens(text string) int {
	if text == "" {
		return 0
	}
	e := encoder()
	if e == nil {
		return (len(text) + 3) / 4
	}
	if len(text) > maxExact {
		return countSampled(text)
	}
	return countExact(text)
}

// countExact counts every token of text; tests replace it to see what is
// counted.
var countExact = func(text string) int {
	e := encoder()
	n := 0
	for text != "" {
		var piece string
		piece, text = cutLongRun(text)
		n += len(e.EncodeOrdinary(piece))
	}
	return n
}

// maxExact is the longest text CountTokens counts token by token; about
// 0.2 s of a CPU. A longer one (a long prompt, or a reply captured up to
// its 1 MiB, estimated because the backend reported no usage or the client
// left: the estimate is made before the reply's last
// bytes go out) is counted by samples.
const (
	maxExact   = 256 << 10
	numSamples = 16
)

// countSampled estimates the tokens of a text longer than maxExact from
// numSamples pieces spread evenly over it, maxExact bytes in all: their
// tokens per byte times the text's bytes. Spread out, the samples follow
// a text that changes along the way (prose, then code, then data).
func countSampled(text string) int {
	size := maxExact / numSamples
	stride := len(text) / numSamples
	tokens, bytes := 0, 0
	for i := range numSamples {
		start := runeStart(text, i*stride)
		end := runeStart(text, min(start+size, len(text)))
		piece := text[start:end]
		tokens += countExact(piece)
		bytes += len(piece)
	}
	if bytes == 0 {
		return (len(text) + 3) / 4
	}
	return int(int64(tokens) * int64(len(text)) / int64(bytes))
}

// runeStart moves i back to the start of the UTF-8 sequence it falls in.
func runeStart(text string, i int) int {
	for i > 0 && i < len(text) && !utf8.RuneStart(text[i]) {
		i--
	}
	return i
}

// maxRun is the longest run of letters, of spaces or of other symbols
// CountTokens gives the tokenizer whole. cl100k's pre-tokenizer makes such
// a run one piece, and byte-pair merging is quadratic in a piece's length:
// 64 KiB of one letter took seconds, a prompt of a few MiB of them hours
// of a CPU. A longer run is counted maxRun bytes at a time, which changes
// its count by about a token per cut; runs this long are rare in text.
const maxRun = 256

// cutLongRun splits text after the first maxRun bytes of a run of one
// class (letters, spaces, anything else but digits) that goes on past
// them; rest is empty when there is no such run.
func cutLongRun(text string) (piece, rest string) {
	class, run := -1, 0
	for i := 0; i < len(text); {
		r, size := utf8.DecodeRuneInString(text[i:])
		c := runeClass(r)
		if c != class {
			class, run = c, 0
		} else if c != classDigit && run >= maxRun {
			return text[:i], text[i:]
		}
		run += size
		i += size
	}
	return text, ""
}

const (
	classLetter = iota
	classDigit
	classSpace
	classOther
)

// runeClass sorts r as cl100k's pre-tokenizer does; digits are cut into
// threes by the pre-tokenizer itself.
func runeClass(r rune) int {
	switch {
	case unicode.IsLetter(r):
		return classLetter
	case unicode.IsNumber(r):
		return classDigit
	case unicode.IsSpace(r):
		return classSpace
	}
	return classOther
}

// EstimatePrompt estimates the prompt tokens of a request: the tokens of its
// prompt text, one per token id of a prompt given as ids, imageTokens per
// image, plus, for chat requests, tokensPerMessage per message and
// tokensPerReply. The sum saturates at math.MaxInt64.
func EstimatePrompt(info RequestInfo, imageTokens int64) int64 {
	return withAllowances(int64(CountTokens(info.Prompt)), info, imageTokens)
}

// withAllowances adds to n, a prompt text's tokens, what EstimatePrompt
// allows for messages, token ids and images.
func withAllowances(n int64, info RequestInfo, imageTokens int64) int64 {
	if info.Messages > 0 {
		n += int64(info.Messages)*tokensPerMessage + tokensPerReply
	}
	n = addSat(n, info.PromptTokenIDs)
	if info.Images > 0 && imageTokens > 0 {
		img := int64(math.MaxInt64)
		if info.Images <= math.MaxInt64/imageTokens {
			img = info.Images * imageTokens
		}
		n = addSat(n, img)
	}
	return n
}

// QuickEstimatePrompt is EstimatePrompt with the prompt text counted from
// its length, about four bytes a token, rather than tokenized: for an
// estimate made on the request path of every request, which only a few
// will ever use.
func QuickEstimatePrompt(info RequestInfo, imageTokens int64) int64 {
	return withAllowances((int64(len(info.Prompt))+3)/4, info, imageTokens)
}

// addSat is a + b for non-negative a and b, at most math.MaxInt64.
func addSat(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}
