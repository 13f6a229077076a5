package usage

// ollama reads an Ollama /api/chat or /api/generate line (or whole body) and
// an /api/embed body. Counts are read from the done:true object; /api/embed
// has no "done" and carries prompt_eval_count only.
func (e *Extractor) ollama(obj []byte) {
	var done, promptEval, eval []byte
	m := objectMembers(obj)
	for k, v, ok := m.next(); ok; k, v, ok = m.next() {
		switch {
		case keyIs(k, "message"):
			mm := objectMembers(v)
			for k, v, ok := mm.next(); ok; k, v, ok = mm.next() {
				switch {
				case keyIs(k, "content"), keyIs(k, "thinking"):
					e.addJSONString(v)
				case keyIs(k, "tool_calls"):
					calls := arrayElements(v)
					for c, ok := calls.next(); ok; c, ok = calls.next() {
						e.addJSONRaw(member(member(c, "function"), "arguments"))
					}
				}
			}
		case keyIs(k, "response"), keyIs(k, "thinking"):
			e.addJSONString(v)
		case keyIs(k, "model"):
			e.setModel(v)
		case keyIs(k, "done_reason"):
			e.setFinish(v)
		case keyIs(k, "done"):
			done = v
		case keyIs(k, "prompt_eval_count"):
			promptEval = v
		case keyIs(k, "eval_count"):
			eval = v
		case keyIs(k, "error"):
			e.setBackendError(v)
		}
	}
	isDone := string(done) == "true"
	if !isDone && done != nil {
		return
	}
	p, hasP := parseCount(promptEval)
	c, hasC := parseCount(eval)
	if hasP {
		e.res.PromptTokens, e.res.PromptKnown = p, true
	}
	switch {
	case hasC:
		e.res.CompletionTokens, e.res.Found = c, true
	case !isDone && hasP: // /api/embed: no completion
		e.res.CompletionTokens, e.res.Found = 0, true
	}
}
