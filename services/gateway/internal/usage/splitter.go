package usage

import "bytes"

// DefaultMaxEvent is the largest partial event a Splitter holds by default.
const DefaultMaxEvent = 1 << 20

// DefaultMaxWhole is the largest event larger than the Splitter's bound
// that it reassembles for Whole by default.
const DefaultMaxWhole = 16 << 20

// Splitter cuts a byte stream into complete Server-Sent Events (each ended by
// a blank line: "\n\n", "\r\n\r\n" or "\r\r") or, with Lines set, into
// NDJSON lines (each ended by "\n").
//
// Emitted pieces include their terminator, so writing every piece in order
// reproduces the stream byte for byte. When a read ends between the CR and
// the LF of an event's CRLF terminator, that LF comes as a piece of its own
// ("\n") before the next event. A piece is valid only during the emit
// call: it may alias the caller's slice or the Splitter's buffer.
//
// A Splitter holds at most Max bytes of an unfinished event between calls.
// When an event outgrows that bound, what is held is emitted as one raw piece
// (not a complete event) and Overflowed reports true; the rest of that event
// follows as further pieces, and Raw reports true while each of them is
// emitted. With Whole set, such an event is also kept (up to MaxWhole
// bytes) and given to Whole whole after its last piece. After warm-up Feed does not allocate: the buffer
// is reused.
//
// A Splitter is not safe for concurrent use. The zero value splits SSE with
// the default bound. After emit returns an error the Splitter must be
// discarded, since the unread part of that Feed is dropped.
type Splitter struct {
	// Lines selects NDJSON mode: one piece per "\n"-terminated line.
	Lines bool
	// Max bounds the bytes held for an unfinished event; 0 means
	// DefaultMaxEvent.
	Max int
	// Whole, when set, is given each event larger than Max once its last
	// piece was emitted: the whole event, if it is at most MaxWhole bytes
	// (0 means DefaultMaxWhole). It is valid only during the call.
	Whole    func(ev []byte)
	MaxWhole int
	// Lost, when set, is told the length of each event larger than
	// MaxWhole, which Whole is not given.
	Lost func(n int)

	big        []byte // the event larger than Max being emitted, for Whole
	bigLen     int    // its length so far
	inBig      bool   // its pieces are being emitted
	bigLost    bool   // it outgrew MaxWhole
	buf        []byte
	notFresh   bool // inside an event: a non-terminator byte was seen
	lineStart  bool // the previous byte ended a line inside the event
	skipLF     bool // the previous piece ended with '\r'; a leading '\n' belongs to it
	overflowed bool
}

// NewSplitter returns a Splitter for the stream format f: NDJSON lines for
// FormatOllamaNDJSON, SSE events otherwise.
func NewSplitter(f Format) *Splitter {
	return &Splitter{Lines: f == FormatOllamaNDJSON}
}

// Overflowed reports whether an event was ever larger than the bound and was
// emitted in raw pieces.
func (s *Splitter) Overflowed() bool { return s.overflowed }

// Raw reports, during an emit call, whether the piece is a part of an
// event larger than the bound rather than a complete event.
func (s *Splitter) Raw() bool { return s.inBig }

// Held returns the bytes of the unfinished event held (nil while an event
// larger than the bound is being emitted): what Flush would emit. It is
// valid until the next call.
func (s *Splitter) Held() []byte {
	if s.inBig {
		return nil
	}
	return s.buf
}

// Reset clears the state and the held bytes, keeping the buffer's storage.
func (s *Splitter) Reset() {
	s.buf = s.buf[:0]
	s.notFresh, s.lineStart, s.skipLF, s.overflowed = false, false, false, false
	s.big, s.bigLen, s.inBig, s.bigLost = nil, 0, false, false
}

func (s *Splitter) max() int {
	if s.Max > 0 {
		return s.Max
	}
	return DefaultMaxEvent
}

// Feed scans p and calls emit for every event completed by it, in order.
// Bytes of an unfinished event are kept for the next call. Feed returns the
// first error emit returns.
func (s *Splitter) Feed(p []byte, emit func(ev []byte) error) error {
	start := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if s.skipLF {
			s.skipLF = false
			if c == '\n' {
				if !s.notFresh {
					// The LF of a CRLF that ended the event before,
					// cut off from it by the read: a piece of its
					// own, so that whoever drops the next event
					// (the relay, a usage chunk) keeps it.
					if err := emit(p[i : i+1]); err != nil {
						return err
					}
					start = i + 1
				}
				continue
			}
		}
		end := false
		if s.Lines {
			if c != '\n' {
				if j := bytes.IndexByte(p[i+1:], '\n'); j >= 0 {
					i += j
				} else {
					i = len(p) - 1
				}
				continue
			}
			end = true
		} else if c == '\n' || c == '\r' {
			if s.lineStart || !s.notFresh {
				end = true
			} else {
				s.lineStart = true
			}
			if c == '\r' {
				if i+1 < len(p) {
					if p[i+1] == '\n' {
						i++
					}
				} else {
					s.skipLF = true
				}
			}
		} else {
			s.notFresh, s.lineStart = true, false
			// Jump to the next line terminator: the bytes between cannot
			// change the state.
			i += nextTerminator(p[i+1:])
			continue
		}
		if !end {
			continue
		}
		s.notFresh, s.lineStart = false, false
		if err := s.emitPiece(p[start:i+1], emit); err != nil {
			return err
		}
		start = i + 1
	}
	if start == len(p) {
		return nil
	}
	tail := p[start:]
	// An event already larger than the bound goes on as it comes.
	if s.inBig || len(s.buf)+len(tail) > s.max() {
		s.overflowed, s.inBig = true, true
		if len(s.buf) > 0 {
			s.keepBig(s.buf)
			err := emit(s.buf)
			s.buf = s.buf[:0]
			if err != nil {
				return err
			}
		}
		s.keepBig(tail)
		return emit(tail)
	}
	if s.buf == nil {
		s.buf = make([]byte, 0, min(s.max(), 4096))
	}
	s.buf = append(s.buf, tail...)
	return nil
}

// emitPiece emits the held bytes joined with piece, which completes an event.
func (s *Splitter) emitPiece(piece []byte, emit func([]byte) error) error {
	if len(s.buf) == 0 {
		if s.inBig {
			return s.endBig(piece, emit)
		}
		return emit(piece)
	}
	if s.inBig || len(s.buf)+len(piece) > s.max() {
		s.overflowed, s.inBig = true, true
		s.keepBig(s.buf)
		err := emit(s.buf)
		s.buf = s.buf[:0]
		if err != nil {
			return err
		}
		return s.endBig(piece, emit)
	}
	s.buf = append(s.buf, piece...)
	err := emit(s.buf)
	s.buf = s.buf[:0]
	return err
}

// keepBig adds p to the event larger than the bound, for Whole.
func (s *Splitter) keepBig(p []byte) {
	s.bigLen += len(p)
	if s.Whole == nil || s.bigLost {
		return
	}
	maxWhole := s.MaxWhole
	if maxWhole <= 0 {
		maxWhole = DefaultMaxWhole
	}
	if len(s.big)+len(p) > maxWhole {
		s.big, s.bigLost = nil, true
		return
	}
	s.big = append(s.big, p...)
}

// endBig gives the event larger than the bound to Whole (or its length
// to Lost), then emits its last piece: the event is read before its last
// bytes go out, as an event within the bound is, and whether they can go
// out or not.
func (s *Splitter) endBig(piece []byte, emit func([]byte) error) error {
	s.keepBig(piece)
	big, n, lost := s.big, s.bigLen, s.bigLost
	s.big, s.bigLen, s.bigLost = nil, 0, false
	switch {
	case lost && s.Lost != nil:
		s.Lost(n)
	case !lost && s.Whole != nil:
		s.Whole(big)
	}
	var err error
	if len(piece) > 0 {
		err = emit(piece)
	}
	s.inBig = false
	return err
}

// Flush emits whatever is held (an event the stream ended without
// terminating) and resets the Splitter for reuse.
func (s *Splitter) Flush(emit func(ev []byte) error) error {
	var err error
	if s.inBig {
		err = s.endBig(s.buf, emit)
	} else if len(s.buf) > 0 {
		err = emit(s.buf)
	}
	overflowed := s.overflowed
	s.Reset()
	s.overflowed = overflowed
	return err
}

// nextTerminator returns how many bytes of p precede the first '\r' or '\n'
// (len(p) if there is none).
func nextTerminator(p []byte) int {
	n := bytes.IndexByte(p, '\n')
	if n < 0 {
		n = len(p)
	}
	if r := bytes.IndexByte(p[:n], '\r'); r >= 0 {
		return r
	}
	return n
}
