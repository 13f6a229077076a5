package main

import (
	"encoding/json"
	"net/http"
)

type messagesRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	// System is a string or an array of text blocks.
	System    json.RawMessage `json:"system"`
	MaxTokens *int            `json:"max_tokens"`
	Stream    bool            `json:"stream"`
}

func anthropicStopReason(capped bool) string {
	if capped {
		return "max_tokens"
	}
	return "end_turn"
}

// messages serves Anthropic's /v1/messages. max_tokens is required by
// Anthropic; the mock tolerates its absence and then does not cap.
func (s *server) messages(c *call, req *messagesRequest) {
	prompt := 0
	for _, m := range req.Messages {
		prompt += messageOverhead + countContent(m.Content)
	}
	if len(req.System) > 0 && string(req.System) != "null" {
		prompt += messageOverhead + countContent(req.System)
	}
	n, capped := c.capTokens(req.MaxTokens)
	model := c.model(req.Model)
	f := &anthropicStream{prompt: prompt, stop: anthropicStopReason(capped)}
	f.modelJSON = appendJSONString(make([]byte, 0, 32), model)
	f.id = s.nextID(make([]byte, 0, 32), "msg_")
	if req.Stream {
		s.stream(c, n, f)
		return
	}
	if !s.generate(c, n) {
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	b := f.appendMessageStart(*bp)
	b = append(b, `"content":[{"type":"text","text":"`...)
	b = appendContent(b, n)
	b = append(b, `"}],"stop_reason":"`...)
	b = append(b, f.stop...)
	b = append(b, `","stop_sequence":null`...)
	if !c.k.OmitUsage {
		b = appendAnthropicUsage(b, prompt, n)
	}
	b = append(b, '}')
	*bp = b
	writeJSON(c.w, http.StatusOK, b)
}

func appendAnthropicUsage(b []byte, input, output int) []byte {
	b = append(b, `,"usage":{"input_tokens":`...)
	b = appendInt(b, input)
	b = append(b, `,"output_tokens":`...)
	b = appendInt(b, output)
	return append(b, '}')
}

// anthropicStream writes Anthropic's SSE: message_start (usage with
// input_tokens), content_block_start, ping, one content_block_delta per
// token, content_block_stop, message_delta (stop_reason and cumulative
// usage.output_tokens), message_stop. Each event is
// "event: <type>\ndata: {json}\n\n".
type anthropicStream struct {
	prompt    int
	stop      string
	modelJSON []byte
	id        []byte
}

func (f *anthropicStream) contentType() string { return "text/event-stream; charset=utf-8" }

// appendMessageStart appends the message object's opening fields, up to
// and including the comma before "content".
func (f *anthropicStream) appendMessageStart(b []byte) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, f.id...)
	b = append(b, `","type":"message","role":"assistant","model":`...)
	b = append(b, f.modelJSON...)
	return append(b, ',')
}

func (f *anthropicStream) event(st *streamer, name string, body []byte) error {
	b := st.begin()
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	b = append(b, body...)
	b = appendSentNS(b)
	return st.emit(append(b, "\n\n"...))
}

func (f *anthropicStream) head(st *streamer) error {
	var tmp [512]byte
	b := append(tmp[:0], `{"type":"message_start","message":`...)
	b = f.appendMessageStart(b)
	b = append(b, `"content":[],"stop_reason":null,"stop_sequence":null`...)
	if !st.c.k.OmitUsage {
		b = appendAnthropicUsage(b, f.prompt, 1)
	}
	b = append(b, '}')
	if err := f.event(st, "message_start", b); err != nil {
		return err
	}
	if err := f.event(st, "content_block_start",
		[]byte(`{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}`)); err != nil {
		return err
	}
	return f.event(st, "ping", []byte(`{"type":"ping"`))
}

func (f *anthropicStream) token(st *streamer, i int) error {
	var tmp [128]byte
	b := append(tmp[:0], `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"`...)
	b = appendTokenText(b, i)
	b = append(b, `"}`...)
	return f.event(st, "content_block_delta", b)
}

func (f *anthropicStream) tail(st *streamer) error {
	if err := f.event(st, "content_block_stop", []byte(`{"type":"content_block_stop","index":0`)); err != nil {
		return err
	}
	var tmp [256]byte
	b := append(tmp[:0], `{"type":"message_delta","delta":{"stop_reason":"`...)
	b = append(b, f.stop...)
	b = append(b, `","stop_sequence":null}`...)
	if !st.c.k.OmitUsage {
		b = append(b, `,"usage":{"output_tokens":`...)
		b = appendInt(b, st.n)
		b = append(b, '}')
	}
	if err := f.event(st, "message_delta", b); err != nil {
		return err
	}
	return f.event(st, "message_stop", []byte(`{"type":"message_stop"`))
}
