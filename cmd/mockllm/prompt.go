package main

import (
	"bytes"
	"encoding/json"
	"unicode"
	"unicode/utf8"
)

// Prompt token counting rule (documented in README.md, relied on by
// tests elsewhere):
//
//   - a text counts one token per whitespace-separated word;
//   - chat-style requests (OpenAI chat, Ollama chat, Anthropic messages)
//     add messageOverhead tokens per message; Anthropic's top-level
//     system prompt counts as one more message;
//   - token-id prompts ([]int) count one token per id;
//   - Ollama /api/generate counts the words of prompt and system.
const messageOverhead = 3

// countWords counts whitespace-separated words without allocating.
func countWords(s string) int {
	n, in := 0, false
	for i := 0; i < len(s); {
		c := s[i]
		var space bool
		if c < utf8.RuneSelf {
			space = c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f'
			i++
		} else {
			r, size := utf8.DecodeRuneInString(s[i:])
			space = unicode.IsSpace(r)
			i += size
		}
		if space {
			in = false
		} else if !in {
			in = true
			n++
		}
	}
	return n
}

// contentPart is one element of an array-shaped message content (OpenAI
// content parts, Anthropic content blocks); only text parts count.
type contentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// countContent counts a message content that is either a string, an
// array of parts, or null.
func countContent(raw json.RawMessage) int {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return countWords(s)
		}
	case '[':
		var parts []contentPart
		if json.Unmarshal(raw, &parts) == nil {
			n := 0
			for _, p := range parts {
				n += countWords(p.Text)
			}
			return n
		}
	}
	return 0
}

// textInputs is a prompt or input that may be a string, a list of
// strings, a list of token ids, or a list of token-id lists (OpenAI
// completions and embeddings, Ollama embed).
type textInputs struct {
	texts  []string
	tokens []int // per input, for token-id inputs
}

func (t *textInputs) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] == 'n' {
		return nil
	}
	if b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		t.texts = []string{s}
		return nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(b, &items); err != nil {
		return err
	}
	var ids []int
	for _, it := range items {
		it = bytes.TrimSpace(it)
		switch {
		case len(it) > 0 && it[0] == '"':
			var s string
			if err := json.Unmarshal(it, &s); err != nil {
				return err
			}
			t.texts = append(t.texts, s)
		case len(it) > 0 && it[0] == '[':
			var l []int
			if err := json.Unmarshal(it, &l); err != nil {
				return err
			}
			t.tokens = append(t.tokens, len(l))
		default:
			var id int
			if err := json.Unmarshal(it, &id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
	}
	if len(ids) > 0 {
		t.tokens = append(t.tokens, len(ids))
	}
	return nil
}

// count is the prompt token count of all inputs.
func (t textInputs) count() int {
	n := 0
	for _, s := range t.texts {
		n += countWords(s)
	}
	for _, c := range t.tokens {
		n += c
	}
	return n
}

// keys are stable per-input strings for deterministic embeddings.
func (t textInputs) keys() []string {
	if len(t.texts) > 0 || len(t.tokens) == 0 {
		if len(t.texts) == 0 {
			return []string{""}
		}
		return t.texts
	}
	k := make([]string, len(t.tokens))
	for i, c := range t.tokens {
		k[i] = "ids:" + string(appendInt(nil, c))
	}
	return k
}
