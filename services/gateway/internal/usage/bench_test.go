package usage

import (
	"bytes"
	"fmt"
	"testing"
)

// openaiStream builds a vLLM-style chat stream of n content chunks plus the
// finish chunk, the usage chunk and [DONE].
func openaiStream(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, `data: {"id":"chatcmpl-9f3c1a7e2b5d4c8e","object":"chat.completion.chunk","created":1732550000,"model":"Qwen/Qwen2.5-7B-Instruct","choices":[{"index":0,"delta":{"content":" tok%d"},"logprobs":null,"finish_reason":null}]}`+"\n\n", i)
	}
	b.WriteString(`data: {"id":"chatcmpl-9f3c1a7e2b5d4c8e","object":"chat.completion.chunk","created":1732550000,"model":"Qwen/Qwen2.5-7B-Instruct","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}` + "\n\n")
	fmt.Fprintf(&b, `data: {"id":"chatcmpl-9f3c1a7e2b5d4c8e","object":"chat.completion.chunk","created":1732550000,"model":"Qwen/Qwen2.5-7B-Instruct","choices":[],"usage":{"prompt_tokens":20,"total_tokens":%d,"completion_tokens":%d}}`+"\n\n", 20+n, n)
	b.WriteString("data: [DONE]\n\n")
	return b.Bytes()
}

// BenchmarkSplitterExtractor measures the per-event cost of what the proxy
// does on an OpenAI stream: split, check for the usage-only chunk, extract.
// The stream is fed in 512-byte reads, as a network read would deliver it.
func BenchmarkSplitterExtractor(b *testing.B) {
	const n = 256
	stream := openaiStream(n)
	events := n + 3
	sp := NewSplitter(FormatOpenAISSE)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		ex := NewExtractor(FormatOpenAISSE, Options{})
		emit := func(ev []byte) error {
			if !IsUsageOnlyChunk(ev) {
				_ = ev // the proxy writes ev here
			}
			ex.Event(ev)
			return nil
		}
		for p := stream; len(p) > 0; {
			k := min(512, len(p))
			_ = sp.Feed(p[:k], emit)
			p = p[k:]
		}
		_ = sp.Flush(emit)
		if r := ex.Result(); r.CompletionTokens != n {
			b.Fatalf("completion tokens %d", r.CompletionTokens)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSplitter measures splitting alone.
func BenchmarkSplitter(b *testing.B) {
	stream := openaiStream(256)
	sp := NewSplitter(FormatOpenAISSE)
	emit := func([]byte) error { return nil }
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		for p := stream; len(p) > 0; {
			k := min(512, len(p))
			_ = sp.Feed(p[:k], emit)
			p = p[k:]
		}
		_ = sp.Flush(emit)
	}
}

// BenchmarkStripUsage: the usage member hidden from a client who did not
// ask, on a vLLM chunk (the member last), for every chunk of such a stream.
func BenchmarkStripUsage(b *testing.B) {
	ev := []byte(`data: {"id":"chatcmpl-9f1c2a","object":"chat.completion.chunk","created":1732760000,"model":"qwen2.5-72b","choices":[{"index":0,"delta":{"content":" hello"},"logprobs":null,"finish_reason":null}],"usage":null}` + "\n\n")
	buf := make([]byte, len(ev))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, ev)
		_ = StripUsage(buf[:len(ev)])
	}
}
