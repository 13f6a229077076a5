package gateway

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"io"
	"strings"

	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

// decodeTee meters a compressed response without touching what the client
// gets: the compressed bytes go to the client as they are, and a copy is
// decompressed on the side and fed to the usage extractor. The side reader
// always drains its pipe, so it never holds the relay back.
type decodeTee struct {
	pw   *io.PipeWriter
	done chan struct{}
	// body is the decompressed non-stream body (bounded) and cut says the
	// body went on past it; read them after Close.
	body []byte
	cut  bool
	// capture is what kept body, for estimateCut.
	capture *replyCapture
}

// newDecodeTee starts metering a body in encoding enc ("gzip", "deflate");
// it returns nil for encodings it cannot read.
func newDecodeTee(enc string, streaming bool, format usage.Format, ex *usage.Extractor) *decodeTee {
	enc, ok := readableEncoding(enc)
	if !ok {
		return nil
	}
	pr, pw := io.Pipe()
	t := &decodeTee{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		defer func() { _, _ = io.Copy(io.Discard, pr) }()
		r, err := decompressor(enc, pr)
		if err != nil {
			return
		}
		buf := make([]byte, 16<<10)
		if !streaming {
			// All of the body is decompressed, so that the usage at the
			// end of a long one is read too.
			var c replyCapture
			for {
				n, err := r.Read(buf)
				c.Write(buf[:n])
				if err != nil {
					break
				}
			}
			c.meter(ex)
			t.body, t.cut = c.kept()
			t.capture = &c
			return
		}
		sp := usage.NewSplitter(format)
		sp.Whole, sp.Lost = ex.Event, ex.Unread
		emit := func(ev []byte) error {
			if !sp.Raw() {
				ex.Event(ev)
			}
			return nil
		}
		for {
			n, err := r.Read(buf)
			if n > 0 {
				_ = sp.Feed(buf[:n], emit)
			}
			if err != nil {
				_ = sp.Flush(emit)
				return
			}
		}
	}()
	return t
}

func decompressor(enc string, r io.Reader) (io.Reader, error) {
	if enc == "deflate" {
		// HTTP's "deflate" is zlib-wrapped; some servers send raw deflate.
		br := &peekReader{r: r}
		if zr, err := zlib.NewReader(br); err == nil {
			return zr, nil
		}
		return flate.NewReader(io.MultiReader(strings.NewReader(string(br.seen)), r)), nil
	}
	return gzip.NewReader(r)
}

// peekReader remembers what was read through it, so a failed zlib header
// can be handed to the raw deflate reader.
type peekReader struct {
	r    io.Reader
	seen []byte
}

func (p *peekReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if len(p.seen) < 64 {
		p.seen = append(p.seen, b[:n]...)
	}
	return n, err
}

// Write copies p to the side reader.
func (t *decodeTee) Write(p []byte) { _, _ = t.pw.Write(p) }

// Close ends the body and waits for the metering to finish.
func (t *decodeTee) Close() {
	_ = t.pw.Close()
	<-t.done
}

// decodeWhole decompresses body, a whole reply in encoding enc ("gzip",
// "deflate"), up to max bytes: ok with what it holds; not ok and nil for
// an encoding it cannot read or bytes that are not of it; not ok and not
// nil when it holds more than max.
func decodeWhole(enc string, body []byte, max int) (plain []byte, ok bool) {
	enc, ok = readableEncoding(enc)
	if !ok {
		return nil, false
	}
	r, err := decompressor(enc, bytes.NewReader(body))
	if err != nil {
		return nil, false
	}
	plain, err = io.ReadAll(io.LimitReader(r, int64(max)+1))
	if err != nil {
		return nil, false
	}
	if len(plain) > max {
		return plain[:0], false
	}
	return plain, true
}

// readableEncoding is enc, a Content-Encoding, as decompressor takes it,
// and whether the gateway can read it (gzip, x-gzip, deflate).
func readableEncoding(enc string) (string, bool) {
	enc = strings.ToLower(strings.TrimSpace(enc))
	return enc, enc == "gzip" || enc == "x-gzip" || enc == "deflate"
}
