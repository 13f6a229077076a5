// Package usage reads token usage off the bytes of an inference response
// while the proxy forwards them.
//
// Everything here is pure: functions and types take bytes and return values,
// never do I/O and never hold a whole stream. The proxy owns the connections
// and writes every piece to the client itself; this package only looks.
//
// One request, as the proxy drives it:
//
//	info, err := usage.ParseRequest(body) // err: answer 400
//	hide := false
//	if info.Stream && (path == "/v1/chat/completions" || path == "/v1/completions") {
//		body, hide, err = usage.AddIncludeUsage(body)
//	}
//	// ... send body upstream, get resp ...
//	f := usage.DetectFormat(path, resp.Header.Get("Content-Type"))
//	ex := usage.NewExtractor(f, usage.Options{MaxText: 64 << 10})
//	if f.Streaming() {
//		sp := usage.NewSplitter(f)
//		emit := func(ev []byte) error {
//			ex.Event(ev)
//			if hide && usage.IsUsageOnlyChunk(ev) {
//				return nil // the client did not ask for it
//			}
//			return writeAndFlush(ev)
//		}
//		// for every read p: sp.Feed(p, emit); at EOF: sp.Flush(emit)
//	} else {
//		ex.Body(respBody)
//	}
//	r := ex.Result()
//	if !r.PromptKnown {
//		r.PromptTokens = usage.EstimatePrompt(info, imageTokens)
//	}
//	if !r.Found {
//		r.CompletionTokens = int64(usage.CountTokens(r.Text)) // scale by r.TextBytes if r.TextTruncated
//	}
//
// The JSON of every event is checked with jsonscan.Valid (json.Valid's verdict at
// a fraction of its cost) and then walked in place: no decoding into structs, so a content chunk costs no allocation
// once the Extractor's buffers have grown.
package usage
