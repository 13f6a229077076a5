package usage

import "net/http"

// tgi reads a TGI /generate body or a /generate_stream event.
//
// TGI reports generated_tokens in "details": on the last stream event
// always, in a /generate body only when the request set
// parameters.details=true. The prompt length comes from the stream details'
// input_length (prompt_tokens in some builds) or from the length of
// details.prefill, which TGI fills only with decoder_input_details=true.
// Otherwise the prompt is not known: Found is true with PromptKnown false,
// and the caller estimates the prompt.
func (e *Extractor) tgi(obj []byte, stream bool) {
	var details []byte
	m := objectMembers(obj)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "token") && stream:
			// Each event carries one token; generated_text on the last
			// event repeats them all. Special tokens (</s>) are not text.
			if string(member(v, "special")) != "true" {
				e.addJSONString(member(v, "text"))
			}
		case keyIs(k, "generated_text") && !stream:
			e.addJSONString(v)
		case keyIs(k, "details"):
			details = v
		case keyIs(k, "error"):
			e.setBackendError(v)
		}
	}
	var prefill int64
	var prompt, generated int64
	var hasPrompt, hasGenerated bool
	d := objectMembers(details)
	for k, v, ok := d.next(); ok; k, v, ok = d.next() {
		switch {
		case keyIs(k, "finish_reason"):
			e.setFinish(v)
		case keyIs(k, "generated_tokens"):
			generated, hasGenerated = parseCount(v)
		case keyIs(k, "input_length"), keyIs(k, "prompt_tokens"):
			prompt, hasPrompt = parseCount(v)
		case keyIs(k, "prefill"):
			el := arrayElements(v)
			for _, ok := el.next(); ok; _, ok = el.next() {
				prefill++
			}
		}
	}
	if !hasPrompt && prefill > 0 {
		prompt, hasPrompt = prefill, true
	}
	if hasPrompt {
		e.res.PromptTokens, e.res.PromptKnown = prompt, true
	}
	if hasGenerated {
		e.res.CompletionTokens, e.res.Found = generated, true
	}
}

// ResponseHeader reads the counts an engine sends in its response headers:
// TGI's /generate answers x-prompt-tokens and x-generated-tokens whatever
// the request's parameters, where its body carries them only with details.
// Call it before Body; counts the body carries are read over them.
func (e *Extractor) ResponseHeader(h http.Header) {
	if e.format != FormatTGIJSON {
		return
	}
	if p, ok := parseCount([]byte(h.Get("X-Prompt-Tokens"))); ok {
		e.res.PromptTokens, e.res.PromptKnown = p, true
	}
	if g, ok := parseCount([]byte(h.Get("X-Generated-Tokens"))); ok {
		e.res.CompletionTokens, e.res.Found = g, true
	}
}
