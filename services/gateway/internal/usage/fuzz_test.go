package usage

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

func FuzzSplitter(f *testing.F) {
	for _, g := range goldens {
		if g.format.Streaming() {
			f.Add(readGolden(f, g.file), uint8(7), g.format == FormatOllamaNDJSON)
		}
	}
	f.Add([]byte("data: a\r\n\r\ndata: b\r\rdata: c\n\n\n"), uint8(1), false)
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8, lines bool) {
		s := &Splitter{Lines: lines, Max: 64}
		var out bytes.Buffer
		emit := func(ev []byte) error {
			out.Write(ev)
			return nil
		}
		step := int(chunk%32) + 1
		for p := in; len(p) > 0; {
			n := min(step, len(p))
			if err := s.Feed(p[:n], emit); err != nil {
				t.Fatal(err)
			}
			if len(s.buf) > 64 {
				t.Fatalf("held %d bytes > Max", len(s.buf))
			}
			p = p[n:]
		}
		_ = s.Flush(emit)
		if !bytes.Equal(out.Bytes(), in) {
			t.Fatalf("emitted bytes differ from input")
		}
	})
}

func FuzzExtractor(f *testing.F) {
	for _, g := range goldens {
		f.Add(readGolden(f, g.file), uint8(g.format))
	}
	f.Add([]byte(`data: {"choices":[{"delta":{"content":"\ud800\u00"}}]}`+"\n\n"), uint8(FormatOpenAISSE))
	f.Fuzz(func(t *testing.T, in []byte, fm uint8) {
		fmt := Format(int(fm) % (int(FormatTGISSE) + 1))
		ex := NewExtractor(fmt, Options{MaxText: 100})
		ex.Body(in)
		ex.BodyCut(in)
		ex.BodyCut(in[:len(in)/2])
		sp := NewSplitter(fmt)
		emit := func(ev []byte) error {
			ex.Event(ev)
			IsUsageOnlyChunk(ev)
			IsFinalEvent(fmt, ev)
			return nil
		}
		_ = sp.Feed(in, emit)
		_ = sp.Flush(emit)
		r := ex.Result()
		if len(r.Text) > 100 || r.PromptTokens < 0 || r.CompletionTokens < 0 {
			t.Fatalf("bad result %+v", r)
		}
		if r.TextBytes < int64(len(r.Text)) {
			t.Fatalf("TextBytes %d < len(Text) %d", r.TextBytes, len(r.Text))
		}
		_ = utf8.ValidString(r.Text)
	})
}

func FuzzAddIncludeUsage(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","stream":true,"messages":[]}`,
		`{"stream":true,"stream_options":{"include_usage":false}}`,
		`{"stream":true,"stream_options":{ }}`,
		`{"stream":true,"stream_options":null}`,
		`{"stream" : true , "stream_options" : {"a":[1,{"b":"}"}]} }`,
		`{"stream":false}`,
		`[true]`,
		`{"stream":true,"stream":false}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, added, err := AddIncludeUsage(in)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON out of valid input:\n%s\n%s", in, out)
		}
		if added == bytes.Equal(out, in) {
			t.Fatalf("added=%v but body changed=%v", added, !bytes.Equal(out, in))
		}
		if !added {
			return
		}
		var v struct {
			Stream        bool `json:"stream"`
			StreamOptions struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		if err := json.Unmarshal(out, &v); err == nil && !v.StreamOptions.IncludeUsage {
			t.Fatalf("include_usage not set:\n%s", out)
		}
		// A second pass finds nothing to do.
		if again, added2, _ := AddIncludeUsage(out); added2 || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent:\n%s\n%s", out, again)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"gpt","stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}`,
		`{"inputs":"x","parameters":{"max_new_tokens":20}}`,
		`{"model":"m","prompt":["a",[1,2]],"options":{"num_predict":5}}`,
		`{"system":[{"type":"text","text":"s"}],"messages":[{"content":[{"content":[{"content":"deep"}]}]}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		info, err := ParseRequest(in)
		if err != nil {
			return
		}
		if !json.Valid(in) {
			t.Fatalf("accepted invalid JSON: %q", in)
		}
		if info.MaxTokens < 0 || info.Messages < 0 {
			t.Fatalf("bad info %+v", info)
		}
	})
}
