// Package usage reads token usage off the bytes of an inference response
// while the proxy forwards them.
//
// Everything here is pure: functions and types take bytes and return values,
// never do I/O and never hold a whole stream. The proxy owns the connection
// and writes each piece to the client itself; this package only looks.
//
// The flow for one request is:
//
//	info, err := usage.ParseRequest(body)          // 400 on err
//	body, hide, err := usage.AddIncludeUsage(body) // streaming OpenAI only
//	f := usage.DetectFormat(path, resp.Header.Get("Content-Type"))
//	sp := usage.NewSplitter(f)
//	ex := usage.NewExtractor(f, usage.Options{MaxText: 64 << 10})
//	sp.Feed(chunk, func(ev []byte) error {         // for every read
//		if hide && usage.IsUsageOnlyChunk(ev) { ex.Event(ev); return nil }
//		ex.Event(ev)
//		return write(ev)
//	})
//	sp.Flush(...)
//	r := ex.Result() // r.Found false: estimate with CountTokens/EstimatePrompt
//
// Non-streamed responses go through Extractor.Body instead of the Splitter.
package usage
