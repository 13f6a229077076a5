package main

import (
	"net/http"
	"strconv"
	"time"
)

type ollamaOptions struct {
	NumPredict *int `json:"num_predict"`
}

type ollamaChatRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"messages"`
	// Stream defaults to true in Ollama when absent.
	Stream  *bool         `json:"stream"`
	Options ollamaOptions `json:"options"`
}

type ollamaGenerateRequest struct {
	Model   string        `json:"model"`
	Prompt  string        `json:"prompt"`
	System  string        `json:"system"`
	Stream  *bool         `json:"stream"`
	Options ollamaOptions `json:"options"`
}

type ollamaEmbedRequest struct {
	Model string     `json:"model"`
	Input textInputs `json:"input"`
}

func (s *server) ollamaChat(c *call, req *ollamaChatRequest) {
	prompt := 0
	for _, m := range req.Messages {
		prompt += messageOverhead + countWords(m.Content)
	}
	s.ollama(c, true, c.model(req.Model), prompt, req.Options, req.Stream)
}

func (s *server) ollamaGenerate(c *call, req *ollamaGenerateRequest) {
	prompt := countWords(req.Prompt) + countWords(req.System)
	s.ollama(c, false, c.model(req.Model), prompt, req.Options, req.Stream)
}

func ollamaDoneReason(capped bool) string {
	if capped {
		return "length"
	}
	return "stop"
}

func (s *server) ollama(c *call, chat bool, model string, prompt int, o ollamaOptions, stream *bool) {
	n, capped := c.capTokens(o.NumPredict)
	f := &ollamaStream{chat: chat, prompt: prompt, doneReason: ollamaDoneReason(capped)}
	f.modelJSON = appendJSONString(make([]byte, 0, 32), model)
	if stream == nil || *stream {
		s.stream(c, n, f)
		return
	}
	if !s.generate(c, n) {
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	b := f.appendLineStart(*bp)
	if chat {
		b = append(b, `"message":{"role":"assistant","content":"`...)
		b = appendContent(b, n)
		b = append(b, `"},`...)
	} else {
		b = append(b, `"response":"`...)
		b = appendContent(b, n)
		b = append(b, `",`...)
	}
	b = f.appendDone(b, c, n)
	b = append(b, '}')
	*bp = b
	writeJSON(c.w, http.StatusOK, b)
}

// ollamaStream writes Ollama's NDJSON: one line per token with
// "done":false, then a final line with "done":true, "done_reason",
// prompt_eval_count, eval_count and the durations in nanoseconds.
type ollamaStream struct {
	chat       bool
	prompt     int
	doneReason string
	modelJSON  []byte
}

func (f *ollamaStream) contentType() string { return "application/x-ndjson" }

func (f *ollamaStream) appendLineStart(b []byte) []byte {
	b = append(b, `{"model":`...)
	b = append(b, f.modelJSON...)
	b = append(b, `,"created_at":"`...)
	b = time.Now().UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, `",`...)
}

func (f *ollamaStream) head(*streamer) error { return nil }

func (f *ollamaStream) token(st *streamer, i int) error {
	b := f.appendLineStart(st.begin())
	if f.chat {
		b = append(b, `"message":{"role":"assistant","content":"`...)
		b = appendTokenText(b, i)
		b = append(b, `"},"done":false`...)
	} else {
		b = append(b, `"response":"`...)
		b = appendTokenText(b, i)
		b = append(b, `","done":false`...)
	}
	b = appendSentNS(b)
	return st.emit(append(b, '\n'))
}

func (f *ollamaStream) tail(st *streamer) error {
	b := f.appendLineStart(st.begin())
	if f.chat {
		b = append(b, `"message":{"role":"assistant","content":""},`...)
	} else {
		b = append(b, `"response":"",`...)
	}
	b = f.appendDone(b, st.c, st.n)
	b = appendSentNS(b)
	return st.emit(append(b, '\n'))
}

// appendDone appends the final fields after "message"/"response".
func (f *ollamaStream) appendDone(b []byte, c *call, n int) []byte {
	total := time.Since(c.start)
	prefill := min(c.k.TTFT, total)
	b = append(b, `"done_reason":"`...)
	b = append(b, f.doneReason...)
	b = append(b, `","done":true,"total_duration":`...)
	b = strconv.AppendInt(b, int64(total), 10)
	b = append(b, `,"load_duration":0`...)
	if !c.k.OmitUsage {
		b = append(b, `,"prompt_eval_count":`...)
		b = appendInt(b, f.prompt)
	}
	b = append(b, `,"prompt_eval_duration":`...)
	b = strconv.AppendInt(b, int64(prefill), 10)
	if !c.k.OmitUsage {
		b = append(b, `,"eval_count":`...)
		b = appendInt(b, n)
	}
	b = append(b, `,"eval_duration":`...)
	return strconv.AppendInt(b, int64(total-prefill), 10)
}

// ollamaEmbed writes {"model":..,"embeddings":[[..]],"total_duration":..,
// "load_duration":..,"prompt_eval_count":..}.
func (s *server) ollamaEmbed(c *call, req *ollamaEmbedRequest) {
	if !s.wait(c, c.k.TTFT) {
		s.recordCancel(c, 0)
		return
	}
	bp := getBuf()
	defer putBuf(bp)
	b := append(*bp, `{"model":`...)
	b = appendJSONString(b, c.model(req.Model))
	b = append(b, `,"embeddings":[`...)
	for i, key := range req.Input.keys() {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEmbedding(b, key, embeddingDims)
	}
	b = append(b, `],"total_duration":`...)
	b = strconv.AppendInt(b, int64(time.Since(c.start)), 10)
	b = append(b, `,"load_duration":0`...)
	if !c.k.OmitUsage {
		b = append(b, `,"prompt_eval_count":`...)
		b = appendInt(b, req.Input.count())
	}
	b = append(b, '}')
	*bp = b
	writeJSON(c.w, http.StatusOK, b)
}

// ollamaTags lists the one model as Ollama's /api/tags does.
func (s *server) ollamaTags(w http.ResponseWriter, r *http.Request) {
	k, err := s.base.withHeaders(r.Header)
	if err != nil {
		writeError(w, famOllama, http.StatusBadRequest, err.Error())
		return
	}
	b := make([]byte, 0, 512)
	b = append(b, `{"models":[{"name":`...)
	b = appendJSONString(b, k.Model)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, k.Model)
	b = append(b, `,"modified_at":"`...)
	b = time.Unix(s.started, 0).UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","size":1000000,"digest":"0000000000000000000000000000000000000000000000000000000000000000",`+
		`"details":{"parent_model":"","format":"gguf","family":"mock","families":["mock"],`+
		`"parameter_size":"1B","quantization_level":"Q4_0"}}]}`...)
	writeJSON(w, http.StatusOK, b)
}
