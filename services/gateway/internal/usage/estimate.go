package usage

import (
	"sync"

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
	return len(e.EncodeOrdinary(text))
}

// EstimatePrompt estimates the prompt tokens of a request: the tokens of its
// prompt text, plus, for chat requests, tokensPerMessage per message and
// tokensPerReply.
func EstimatePrompt(info RequestInfo) int64 {
	n := int64(CountTokens(info.Prompt))
	if info.Messages > 0 {
		n += int64(info.Messages)*tokensPerMessage + tokensPerReply
	}
	return n
}
