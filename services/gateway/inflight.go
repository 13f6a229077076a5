package gateway

import (
	"bytes"
	"fmt"

	"github.com/llmproxy/llmproxy/services/gateway/internal/inflight"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

// openJournal opens the in-flight journal in the outbox's directory,
// publishes, through the outbox, an event for every stream a previous
// process left unfinished, and starts the journal.
func (g *Gateway) openJournal(dir string) error {
	j, cut, err := inflight.Open(dir, inflight.Options{Count: usage.CountTokens, Logger: g.log})
	if err != nil {
		return err
	}
	for _, ev := range cut {
		g.publisher.PublishDurable(ev)
	}
	if len(cut) > 0 {
		g.log.Warn("published the events of streams an earlier process left unfinished (it stopped without ending them); their usage is estimated up to their last checkpoint",
			"streams", len(cut), "error", inflight.ErrorCrashed)
	}
	if err := j.Start(); err != nil {
		return fmt.Errorf("event outbox: %w", err)
	}
	g.journal = j
	return nil
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
	// Text is counted up to its last space, so that no word is cut in
	// two and counted twice.
	n := bytes.LastIndexAny(text, " \n\t") + 1
	cp := inflight.Checkpoint{
		Uncounted:    res.TextBytes - int64(x.journalText+n),
		PromptTokens: res.PromptTokens, PromptKnown: res.PromptKnown,
		CompletionTokens: res.CompletionTokens, CompletionKnown: res.Found,
		Latency: now.Sub(x.start), TTFT: x.ttft,
	}
	if n > 0 {
		cp.Text = bytes.Clone(text[:n])
	}
	if g.journal.Progress(x.requestID, cp) {
		x.journalText += n
	}
}
