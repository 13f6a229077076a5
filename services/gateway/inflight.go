package gateway

import (
	"bytes"
	"fmt"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway/internal/inflight"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

// openJournal opens the in-flight journal in the outbox's directory,
// publishes, through the outbox, an event for every stream a previous
// process left unfinished, and starts the journal.
func (g *Gateway) openJournal(dir string) error {
	// The tokenizer loads its ranks on first use (hundreds of
	// milliseconds, more on a loaded machine); the journal's writer counts
	// each checkpoint with it before writing it, so the ranks are loaded
	// now, in the background, rather than on the first checkpoint, which a
	// crash in the first second of a stream would then find unwritten.
	go usage.CountTokens("warm")
	j, cut, err := inflight.Open(dir, inflight.Options{Count: usage.CountTokens, Logger: g.log})
	if err != nil {
		return err
	}
	for _, ev := range cut {
		g.publisher.PublishDurable(ev)
	}
	g.metrics.recovered.Add(float64(len(cut)))
	if len(cut) > 0 {
		// The journal is emptied next: its events must be on disk in
		// the outbox first, even past a power loss.
		if err := g.publisher.Flush(); err != nil {
			return err
		}
		g.log.Warn("published the events of streams an earlier process left unfinished (it stopped without ending them); their usage is estimated up to their last checkpoint",
			"streams", len(cut), "error", inflight.ErrorCrashed)
		g.releaseCut(cut)
	}
	if err := j.Start(); err != nil {
		return fmt.Errorf("event outbox: %w", err)
	}
	g.journal = j
	return nil
}

// releaseCut frees, in the background, the concurrency leases the streams
// an earlier process left unfinished still hold in a shared admitter
// (Redis): their key's slots come free at this restart, not a lease TTL
// after the crash. A local admitter's leases died with that process.
func (g *Gateway) releaseCut(cut []*events.RequestCompleted) {
	if g.admitter == nil {
		return
	}
	if _, local := g.admitter.(*ledger.MemoryAdmitter); local {
		return
	}
	go func() {
		for _, ev := range cut {
			g.releaseLease(ev.KeyID, ev.RequestID)
		}
	}()
}

// checkpoint keeps x's stream in the in-flight journal. It runs on the
// relay's goroutine after a piece of the stream went out: the first opens
// the stream's entry, and one every inflight.CheckpointEvery after that
// hands the journal the text delivered since (the journal's writer counts
// its tokens, off the request path).
func (g *Gateway) checkpoint(x *exchange, ex *usage.Extractor) {
	now := g.now()
	if !x.journaled {
		x.journaled = true
		x.checkpointAt = now.Add(inflight.CheckpointEvery)
		ev := x.event()
		// Until a checkpoint says more, the prompt is estimated from its
		// length, as admission does: tokenizing it here would cost every
		// stream for the sake of the few a crash cuts.
		ev.Usage.PromptTokens = usage.QuickEstimatePrompt(x.info, x.rt.cfg.Auth.Defaults.ImageTokens)
		ev.LatencyMS, ev.TTFTMS = now.Sub(x.start).Milliseconds(), x.ttft.Milliseconds()
		g.journal.Open(ev)
		return
	}
	if now.Before(x.checkpointAt) {
		return
	}
	x.checkpointAt = now.Add(inflight.CheckpointEvery)
	res, text := ex.Partial(x.journalText)
	n := countable(text)
	cp := inflight.Checkpoint{
		Uncounted:    res.TextBytes - int64(x.journalText+n),
		PromptTokens: res.PromptTokens, PromptKnown: res.PromptKnown,
		CompletionTokens: res.CompletionTokens, CompletionKnown: res.Found,
		CompletionBound: x.info.CompletionBound(x.path),
		Latency:         now.Sub(x.start), TTFT: x.ttft,
	}
	if n > 0 {
		cp.Text = bytes.Clone(text[:n])
	}
	if g.journal.Progress(x.requestID, cp) {
		x.journalText += n
	}
}

// countable is how much of text, a stream's text since its last
// checkpoint, a checkpoint counts: up to its last space, not including it,
// so that no word is cut in two and the space is counted with the word
// after it, as a tokenizer counts the whole (" tok12", not "tok12" and " ").
// A text of no spaces (Chinese, say) is counted whole once it is long,
// up to its last whole character.
func countable(text []byte) int {
	if n := bytes.LastIndexAny(text, " \n\t"); n > 0 {
		return n
	}
	if len(text) < 256 {
		return 0
	}
	// Leave a last character the text does not yet hold whole.
	i := len(text) - 1
	for i > 0 && !utf8.RuneStart(text[i]) {
		i--
	}
	if utf8.FullRune(text[i:]) {
		return len(text)
	}
	return i
}
