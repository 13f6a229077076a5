package gateway

import (
	"bytes"

	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

// maxReplyCapture bounds the non-stream reply kept whole, for usage and
// response capture.
const maxReplyCapture = 8 << 20

// replyTailBytes is how much of the end of a longer reply is kept: where
// OpenAI-style engines put usage (after an embeddings reply's vectors, or
// the choices of a long completion) and Ollama its counts.
const replyTailBytes = 64 << 10

// replyCapture keeps a non-stream reply as it passes: all of it up to max
// bytes; past that, its first max bytes (a prefix, never bytes with a gap)
// and a rolling tail of its last replyTailBytes. The zero value keeps up
// to maxReplyCapture. It serves one request and is not safe for concurrent
// use.
type replyCapture struct {
	max  int // 0: maxReplyCapture
	body bytes.Buffer
	// cut is set once the reply outgrew max: body stops there for good
	// and tail follows the reply's end.
	cut  bool
	tail []byte
	// size counts the reply's bytes, kept or not.
	size int
}

// Write keeps p, the reply's next bytes.
func (c *replyCapture) Write(p []byte) {
	c.size += len(p)
	if !c.cut {
		limit := c.max
		if limit <= 0 {
			limit = maxReplyCapture
		}
		if c.body.Len()+len(p) <= limit {
			c.body.Write(p)
			return
		}
		c.cut = true
		b := c.body.Bytes()
		c.tail = make([]byte, 0, 2*replyTailBytes)
		c.tail = append(c.tail, b[max(len(b)-replyTailBytes, 0):]...)
	}
	if len(p) >= replyTailBytes {
		c.tail = append(c.tail[:0], p[len(p)-replyTailBytes:]...)
		return
	}
	if len(c.tail)+len(p) > cap(c.tail) {
		// Slide the last bytes still needed to the front.
		keep := replyTailBytes - len(p)
		c.tail = c.tail[:copy(c.tail, c.tail[len(c.tail)-keep:])]
	}
	c.tail = append(c.tail, p...)
}

// meter reads the reply's usage into ex: from the whole body, or from the
// tail of one that was cut.
func (c *replyCapture) meter(ex *usage.Extractor) {
	switch {
	case c.cut:
		ex.BodyTail(c.tail)
	case c.body.Len() > 0:
		ex.Body(c.body.Bytes())
	}
}

// estimateCut gives ex the text of a whole reply too long to keep whose
// tail held no usage, to be estimated: what the kept bytes hold, and the
// rest by its length (unreadText).
func (c *replyCapture) estimateCut(ex *usage.Extractor) {
	if r, _ := ex.Partial(0); c.cut && !r.Found {
		ex.BodyCut(c.body.Bytes())
		unreadText(ex, c.size-c.body.Len())
	}
}

// unreadText counts n bytes of a reply past what was kept of it as text,
// by their length, when what was kept held text: the rest of an
// embeddings reply's vectors, say, is none, and is not billed as a
// completion.
func unreadText(ex *usage.Extractor, n int) {
	if r, _ := ex.Partial(0); r.TextBytes > 0 {
		ex.Unread(n)
	}
}

// kept returns the bytes kept from the reply's start, and whether the
// reply went on past them.
func (c *replyCapture) kept() ([]byte, bool) { return c.body.Bytes(), c.cut }
