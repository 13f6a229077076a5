package main

import (
	"encoding/json"
	"hash/fnv"
	"math"
	"net/http"
	"strconv"
	"time"
)

type chatRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options"`
	MaxTokens     *int           `json:"max_tokens"`
	// MaxCompletionTokens is OpenAI's newer name for MaxTokens.
	MaxCompletionTokens *int `json:"max_completion_tokens"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type completionRequest struct {
	Model         string         `json:"model"`
	Prompt        textInputs     `json:"prompt"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options"`
	MaxTokens     *int           `json:"max_tokens"`
}

type embeddingRequest struct {
	Model      string     `json:"model"`
	Input      textInputs `json:"input"`
	Dimensions int        `json:"dimensions"`
}

func (s *server) chatCompletions(c *call, req *chatRequest) {
	prompt := 0
	for _, m := range req.Messages {
		prompt += messageOverhead + countContent(m.Content)
	}
	limit := req.MaxCompletionTokens
	if limit == nil {
		limit = req.MaxTokens
	}
	n, capped := c.capTokens(limit)
	s.openai(c, true, c.model(req.Model), prompt, n, capped, req.Stream, req.StreamOptions)
}

func (s *server) completions(c *call, req *completionRequest) {
	n, capped := c.capTokens(req.MaxTokens)
	s.openai(c, false, c.model(req.Model), req.Prompt.count(), n, capped, req.Stream, req.StreamOptions)
}

func finishReason(capped bool) string {
	if capped {
		return "length"
	}
	return "stop"
}

// openai writes a chat completion (chat) or text completion reply.
func (s *server) openai(c *call, chat bool, model string, prompt, n int, capped, stream bool, so *streamOptions) {
	if stream {
		f := &openaiStream{
			chat:   chat,
			finish: finishReason(capped),
			prompt: prompt,
			usage:  so != nil && so.IncludeUsage && !c.k.OmitUsage,
		}
		f.prefixBase = f.prefix(s, model)
		s.stream(c, n, f)
		return
	}
	if !s.generate(c, n) {
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	b := *bp
	b = append(b, `{"id":`...)
	if chat {
		b = append(b, '"')
		b = s.nextID(b, "chatcmpl-")
		b = append(b, `","object":"chat.completion","created":`...)
	} else {
		b = append(b, '"')
		b = s.nextID(b, "cmpl-")
		b = append(b, `","object":"text_completion","created":`...)
	}
	b = strconv.AppendInt(b, time.Now().Unix(), 10)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, model)
	if chat {
		b = append(b, `,"choices":[{"index":0,"message":{"role":"assistant","content":"`...)
		b = appendContent(b, n)
		b = append(b, `"},"logprobs":null,"finish_reason":"`...)
	} else {
		b = append(b, `,"choices":[{"index":0,"text":"`...)
		b = appendContent(b, n)
		b = append(b, `","logprobs":null,"finish_reason":"`...)
	}
	b = append(b, finishReason(capped)...)
	b = append(b, `"}]`...)
	if !c.k.OmitUsage {
		b = appendOpenAIUsage(b, prompt, n)
	}
	b = append(b, '}')
	*bp = b
	writeJSON(c.w, http.StatusOK, b)
}

// appendOpenAIUsage appends `,"usage":{...}`.
func appendOpenAIUsage(b []byte, prompt, completion int) []byte {
	b = append(b, `,"usage":{"prompt_tokens":`...)
	b = appendInt(b, prompt)
	b = append(b, `,"completion_tokens":`...)
	b = appendInt(b, completion)
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, prompt+completion)
	return append(b, '}')
}

// openaiStream writes OpenAI/vLLM SSE chunks: "data: {chunk}\n\n", a
// role chunk first (chat only), one chunk per token, a chunk with the
// finish reason, with include_usage a last chunk with "choices":[] and
// the usage (the others then carry "usage":null), and "data: [DONE]".
type openaiStream struct {
	chat       bool
	usage      bool // stream_options.include_usage and usage not omitted
	finish     string
	prompt     int
	prefixBase []byte // `data: {"id":..,"object":..,"created":..,"model":..,"choices":[`
}

func (f *openaiStream) prefix(s *server, model string) []byte {
	b := make([]byte, 0, 128)
	b = append(b, `data: {"id":"`...)
	if f.chat {
		b = s.nextID(b, "chatcmpl-")
		b = append(b, `","object":"chat.completion.chunk","created":`...)
	} else {
		b = s.nextID(b, "cmpl-")
		b = append(b, `","object":"text_completion","created":`...)
	}
	b = strconv.AppendInt(b, time.Now().Unix(), 10)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, model)
	return append(b, `,"choices":[`...)
}

func (f *openaiStream) contentType() string { return "text/event-stream; charset=utf-8" }

// end closes the choices array and the chunk.
func (f *openaiStream) end(b []byte) []byte {
	b = append(b, ']')
	if f.usage {
		b = append(b, `,"usage":null`...)
	}
	b = appendSentNS(b)
	return append(b, "\n\n"...)
}

func (f *openaiStream) head(st *streamer) error {
	if !f.chat {
		return nil
	}
	b := append(st.begin(), f.prefixBase...)
	b = append(b, `{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}`...)
	return st.emit(f.end(b))
}

func (f *openaiStream) token(st *streamer, i int) error {
	b := append(st.begin(), f.prefixBase...)
	if f.chat {
		b = append(b, `{"index":0,"delta":{"content":"`...)
		b = appendTokenText(b, i)
		b = append(b, `"},"logprobs":null,"finish_reason":null}`...)
	} else {
		b = append(b, `{"index":0,"text":"`...)
		b = appendTokenText(b, i)
		b = append(b, `","logprobs":null,"finish_reason":null}`...)
	}
	return st.emit(f.end(b))
}

func (f *openaiStream) tail(st *streamer) error {
	b := append(st.begin(), f.prefixBase...)
	if f.chat {
		b = append(b, `{"index":0,"delta":{},"logprobs":null,"finish_reason":"`...)
	} else {
		b = append(b, `{"index":0,"text":"","logprobs":null,"finish_reason":"`...)
	}
	b = append(b, f.finish...)
	b = append(b, `"}`...)
	if err := st.emit(f.end(b)); err != nil {
		return err
	}
	if f.usage {
		b = append(st.begin(), f.prefixBase...)
		b = append(b, ']')
		b = appendOpenAIUsage(b, f.prompt, st.n)
		b = appendSentNS(b)
		b = append(b, "\n\n"...)
		if err := st.emit(b); err != nil {
			return err
		}
	}
	return st.emit(append(st.begin(), "data: [DONE]\n\n"...))
}

func (s *server) embeddings(c *call, req *embeddingRequest) {
	dims := req.Dimensions
	if dims <= 0 || dims > 4096 {
		dims = embeddingDims
	}
	if !s.wait(c, c.k.TTFT) {
		s.recordCancel(c, 0)
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	b := append(*bp, `{"object":"list","data":[`...)
	for i, key := range req.Input.keys() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"object":"embedding","index":`...)
		b = appendInt(b, i)
		b = append(b, `,"embedding":`...)
		b = appendEmbedding(b, key, dims)
		b = append(b, '}')
	}
	b = append(b, `],"model":`...)
	b = appendJSONString(b, c.model(req.Model))
	if !c.k.OmitUsage {
		p := req.Input.count()
		b = append(b, `,"usage":{"prompt_tokens":`...)
		b = appendInt(b, p)
		b = append(b, `,"total_tokens":`...)
		b = appendInt(b, p)
		b = append(b, '}')
	}
	b = append(b, '}')
	*bp = b
	writeJSON(c.w, http.StatusOK, b)
}

// embeddingDims is the default vector length: small, since only the
// shape matters to the gateway.
const embeddingDims = 8

// appendEmbedding appends a deterministic unit vector derived from key.
func appendEmbedding(b []byte, key string, dims int) []byte {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	x := h.Sum64() | 1
	v := make([]float64, dims)
	var norm float64
	for i := range v {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		v[i] = float64(int64(x%2000001)-1000000) / 1e6
		norm += v[i] * v[i]
	}
	norm = math.Sqrt(norm)
	b = append(b, '[')
	for i, f := range v {
		if i > 0 {
			b = append(b, ',')
		}
		if norm > 0 {
			f /= norm
		}
		b = strconv.AppendFloat(b, f, 'f', 6, 64)
	}
	return append(b, ']')
}

func (s *server) models(w http.ResponseWriter, r *http.Request) {
	k, err := s.base.withHeaders(r.Header)
	if err != nil {
		writeError(w, famOpenAI, http.StatusBadRequest, err.Error())
		return
	}
	b := make([]byte, 0, 256)
	b = append(b, `{"object":"list","data":[{"id":`...)
	b = appendJSONString(b, k.Model)
	b = append(b, `,"object":"model","created":`...)
	b = strconv.AppendInt(b, s.started, 10)
	b = append(b, `,"owned_by":"vllm","root":`...)
	b = appendJSONString(b, k.Model)
	b = append(b, `,"parent":null,"max_model_len":32768}]}`...)
	writeJSON(w, http.StatusOK, b)
}
