package main

import (
	"net/http"
	"strconv"
)

type tgiRequest struct {
	Inputs     string `json:"inputs"`
	Parameters struct {
		MaxNewTokens        *int `json:"max_new_tokens"`
		Details             bool `json:"details"`
		DecoderInputDetails bool `json:"decoder_input_details"`
	} `json:"parameters"`
}

// tgiTokenID is the id of completion token i; prefill tokens use
// tgiPrefillID so the two never collide.
func tgiTokenID(i int) int   { return 1000 + i }
func tgiPrefillID(i int) int { return 100000 + i }

func tgiFinish(capped bool) string {
	if capped {
		return "length"
	}
	return "eos_token"
}

// tgiGenerate writes {"generated_text":..} and, when parameters.details
// is set, "details" with finish_reason, generated_tokens, seed, prefill
// (filled only with decoder_input_details, as TGI does) and tokens. The
// counts also go in the x-prompt-tokens and x-generated-tokens headers,
// which TGI sends with every /generate reply.
func (s *server) tgiGenerate(c *call, req *tgiRequest) {
	n, capped := c.capTokens(req.Parameters.MaxNewTokens)
	if !s.generate(c, n) {
		return
	}
	if !c.k.OmitUsage {
		h := c.w.Header()
		h["X-Prompt-Tokens"] = []string{strconv.Itoa(countWords(req.Inputs))}
		h["X-Generated-Tokens"] = []string{strconv.Itoa(n)}
	}
	bp := getBuf()
	defer putBuf(bp)
	b := append(*bp, `{"generated_text":"`...)
	b = appendContent(b, n)
	b = append(b, '"')
	if req.Parameters.Details && !c.k.OmitUsage {
		b = append(b, `,"details":{"finish_reason":"`...)
		b = append(b, tgiFinish(capped)...)
		b = append(b, `","generated_tokens":`...)
		b = appendInt(b, n)
		b = append(b, `,"seed":null,"prefill":[`...)
		if req.Parameters.DecoderInputDetails {
			for i := range countWords(req.Inputs) {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, `{"id":`...)
				b = appendInt(b, tgiPrefillID(i))
				b = append(b, `,"text":"p`...)
				b = appendInt(b, i)
				if i == 0 {
					b = append(b, `","logprob":null}`...)
				} else {
					b = append(b, `","logprob":-0.1}`...)
				}
			}
		}
		b = append(b, `],"tokens":[`...)
		for i := range n {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendTGIToken(b, i)
		}
		b = append(b, `]}`...)
	}
	b = append(b, '}')
	*bp = b
	writeJSON(c.w, http.StatusOK, b)
}

func appendTGIToken(b []byte, i int) []byte {
	b = append(b, `{"id":`...)
	b = appendInt(b, tgiTokenID(i))
	b = append(b, `,"text":"`...)
	b = appendTokenText(b, i)
	return append(b, `","logprob":-0.1,"special":false}`...)
}

func (s *server) tgiGenerateStream(c *call, req *tgiRequest) {
	n, capped := c.capTokens(req.Parameters.MaxNewTokens)
	s.stream(c, n, &tgiStream{finish: tgiFinish(capped), prompt: countWords(req.Inputs), details: req.Parameters.Details})
}

// tgiStream writes TGI's SSE events, "data:{...}\n\n" with no space after
// the colon: one event per token with "generated_text":null and
// "details":null, except the last token's event, which carries the whole
// generated_text and, when parameters.details is set (TGI sends them
// only then), details {finish_reason, generated_tokens, seed,
// input_length}. A zero-token reply sends one special end-of-sequence
// token event.
type tgiStream struct {
	finish  string
	prompt  int
	details bool
}

func (f *tgiStream) contentType() string { return "text/event-stream" }

func (f *tgiStream) head(*streamer) error { return nil }

func (f *tgiStream) token(st *streamer, i int) error {
	b := append(st.begin(), `data:{"index":`...)
	b = appendInt(b, i+1)
	b = append(b, `,"token":`...)
	b = appendTGIToken(b, i)
	if i < st.n-1 {
		b = append(b, `,"generated_text":null,"details":null`...)
	} else {
		b = f.appendFinal(b, st)
	}
	b = appendSentNS(b)
	return st.emit(append(b, "\n\n"...))
}

func (f *tgiStream) appendFinal(b []byte, st *streamer) []byte {
	b = append(b, `,"generated_text":"`...)
	b = appendContent(b, st.n)
	b = append(b, '"')
	if st.c.k.OmitUsage || !f.details {
		return append(b, `,"details":null`...)
	}
	b = append(b, `,"details":{"finish_reason":"`...)
	b = append(b, f.finish...)
	b = append(b, `","generated_tokens":`...)
	b = appendInt(b, st.n)
	b = append(b, `,"seed":null,"input_length":`...)
	b = appendInt(b, f.prompt)
	return append(b, '}')
}

func (f *tgiStream) tail(st *streamer) error {
	if st.n > 0 {
		return nil
	}
	b := append(st.begin(), `data:{"index":1,"token":{"id":2,"text":"</s>","logprob":-0.1,"special":true}`...)
	b = f.appendFinal(b, st)
	b = appendSentNS(b)
	return st.emit(append(b, "\n\n"...))
}
