package main

import (
	"net/http"
)

// streamFormat writes one dialect's streamed events. Each method appends
// one or more complete events via st.emit, which flushes after each.
type streamFormat interface {
	contentType() string
	// head writes the events before the first token (may write none).
	head(st *streamer) error
	// token writes the event carrying completion token i of n.
	token(st *streamer, i int) error
	// tail writes the events after the last token.
	tail(st *streamer) error
}

// streamer sends the events of one response. It is owned by the handler
// goroutine and must not be shared.
type streamer struct {
	c   *call
	rc  *http.ResponseController
	buf []byte
	n   int // completion tokens in this reply
}

// begin returns the scratch buffer for the next event.
func (st *streamer) begin() []byte { return st.buf[:0] }

// emit writes one complete event and flushes it to the client at once.
func (st *streamer) emit(b []byte) error {
	st.buf = b
	if _, err := st.c.w.Write(b); err != nil {
		return err
	}
	if err := st.rc.Flush(); err != nil {
		return err
	}
	return st.c.ctx().Err()
}

// stream runs a streamed reply of n tokens: TTFT before the first byte,
// Gap between tokens, a connection drop after DropAfter token events, and
// Connection: close when CloseAfterStream is set. A client that leaves is
// noticed through the request context and recorded.
func (s *server) stream(c *call, n int, f streamFormat) {
	h := c.w.Header()
	h["Content-Type"] = []string{f.contentType()}
	h["Cache-Control"] = []string{"no-cache"}
	if c.k.CloseAfterStream {
		h["Connection"] = []string{"close"}
	}
	if !s.wait(c, c.k.TTFT) {
		s.recordCancel(c, 0)
		return
	}
	c.w.WriteHeader(http.StatusOK)

	bp := getBuf()
	defer putBuf(bp)
	st := &streamer{c: c, rc: http.NewResponseController(c.w), buf: *bp, n: n}
	defer func() { *bp = st.buf }()

	sent := 0
	err := f.head(st)
	for i := 0; err == nil && i < n; i++ {
		if c.k.DropAfter == sent {
			s.drop(st, sent)
			return
		}
		if i > 0 && !s.wait(c, c.k.Gap) {
			s.recordCancel(c, sent)
			return
		}
		if err = f.token(st, i); err == nil {
			sent++
		}
	}
	if err == nil && c.k.DropAfter == sent {
		s.drop(st, sent)
		return
	}
	if err == nil {
		err = f.tail(st)
	}
	if err != nil {
		s.recordCancel(c, sent)
	}
}

// drop closes the client's TCP connection without finishing the
// response: no terminating event and, on HTTP/1.1, no final chunk.
func (s *server) drop(st *streamer, sent int) {
	s.dropped.Add(1)
	s.log.Info("dropping connection", "path", st.c.r.URL.Path, "tokens_sent", sent)
	_ = st.rc.Flush()
	conn, _, err := st.rc.Hijack()
	if err != nil {
		// HTTP/2 cannot be hijacked; aborting resets the stream instead.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
