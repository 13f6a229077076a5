package usage

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func collect(t testing.TB, s *Splitter, parts ...[]byte) []string {
	t.Helper()
	var evs []string
	emit := func(ev []byte) error {
		evs = append(evs, string(ev))
		return nil
	}
	for _, p := range parts {
		if err := s.Feed(p, emit); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(emit); err != nil {
		t.Fatal(err)
	}
	return evs
}

// normalize drops line-terminator-only pieces and trims terminators, so
// splits that move a CRLF's LF into the next piece compare equal.
func normalize(evs []string) []string {
	var out []string
	for _, e := range evs {
		e = strings.Trim(e, "\r\n")
		if e != "" {
			out = append(out, e)
		}
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSplitterEveryOffset cuts every capture at every byte offset (into
// three pieces: [0,i), [i,i+3), the rest) and checks that the same events
// come out. With CRLF line ends a cut between an event's final CR and LF
// moves the LF into the next piece, so those are compared with terminators
// trimmed.
func TestSplitterEveryOffset(t *testing.T) {
	for _, g := range goldens {
		if !g.format.Streaming() {
			continue
		}
		for _, crlf := range []bool{false, true} {
			b := readGolden(t, g.file)
			if crlf {
				b = bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
			}
			want := collect(t, NewSplitter(g.format), b)
			if strings.Join(want, "") != string(b) {
				t.Fatalf("%s: pieces do not reproduce the stream", g.file)
			}
			loose := crlf && g.format.sse()
			if loose {
				want = normalize(want)
			}
			sp := NewSplitter(g.format)
			for i := 0; i <= len(b); i++ {
				j := min(len(b), i+3)
				n, pos, bad := 0, 0, false
				emit := func(ev []byte) error {
					if !bytes.Equal(ev, b[pos:pos+len(ev)]) {
						bad = true
					}
					pos += len(ev)
					if loose {
						ev = bytes.Trim(ev, "\r\n")
						if len(ev) == 0 {
							return nil
						}
					}
					if n >= len(want) || string(ev) != want[n] {
						bad = true
					}
					n++
					return nil
				}
				sp.Reset()
				for _, p := range [][]byte{b[:i], b[i:j], b[j:]} {
					_ = sp.Feed(p, emit)
				}
				_ = sp.Flush(emit)
				if bad || n != len(want) || pos != len(b) {
					t.Fatalf("%s crlf=%v cut %d: events differ", g.file, crlf, i)
				}
			}
		}
	}
}

func TestSplitterTerminators(t *testing.T) {
	tests := []struct {
		name  string
		lines bool
		in    string
		want  []string
	}{
		{"lf", false, "data: a\n\ndata: b\n\n", []string{"data: a\n\n", "data: b\n\n"}},
		{"crlf", false, "data: a\r\n\r\ndata: b\r\n\r\n", []string{"data: a\r\n\r\n", "data: b\r\n\r\n"}},
		{"cr", false, "data: a\r\rdata: b\r\r", []string{"data: a\r\r", "data: b\r\r"}},
		{"multi-line event", false, "event: x\ndata: a\ndata: b\n\n", []string{"event: x\ndata: a\ndata: b\n\n"}},
		{"comment", false, ": ping\n\ndata: a\n\n", []string{": ping\n\n", "data: a\n\n"}},
		{"leading blank line", false, "\ndata: a\n\n", []string{"\n", "data: a\n\n"}},
		{"unterminated tail", false, "data: a\n\ndata: b\n", []string{"data: a\n\n", "data: b\n"}},
		{"ndjson", true, "{\"a\":1}\n{\"b\":2}\r\n{\"c\":3}", []string{"{\"a\":1}\n", "{\"b\":2}\r\n", "{\"c\":3}"}},
		{"ndjson blank", true, "{}\n\n{}\n", []string{"{}\n", "\n", "{}\n"}},
	}
	for _, tt := range tests {
		got := collect(t, &Splitter{Lines: tt.lines}, []byte(tt.in))
		if !equal(got, tt.want) {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestSplitterCRAtChunkEnd(t *testing.T) {
	// The event is emitted as soon as its final CR arrives; the LF that
	// follows in the next read is a piece of its own, so that the next
	// event can be dropped without it.
	s := &Splitter{}
	var got []string
	emit := func(ev []byte) error { got = append(got, string(ev)); return nil }
	_ = s.Feed([]byte("data: a\r\n\r"), emit)
	if !equal(got, []string{"data: a\r\n\r"}) {
		t.Fatalf("got %q", got)
	}
	_ = s.Feed([]byte("\ndata: b\r\n\r\n"), emit)
	if !equal(got, []string{"data: a\r\n\r", "\n", "data: b\r\n\r\n"}) {
		t.Fatalf("got %q", got)
	}
}

func TestSplitterOversize(t *testing.T) {
	s := &Splitter{Max: 16}
	big := "data: " + strings.Repeat("x", 40) + "\n\n"
	in := "data: a\n\n" + big + "data: b\n\n"
	// Fed a byte at a time, the splitter may hold no more than Max bytes.
	var got []string
	emit := func(ev []byte) error {
		got = append(got, string(ev))
		return nil
	}
	for i := 0; i < len(in); i++ {
		if err := s.Feed([]byte{in[i]}, emit); err != nil {
			t.Fatal(err)
		}
		if len(s.buf) > s.Max || cap(s.buf) > 4096 {
			t.Fatalf("held %d bytes (cap %d)", len(s.buf), cap(s.buf))
		}
	}
	_ = s.Flush(emit)
	if !s.Overflowed() {
		t.Error("Overflowed = false")
	}
	if strings.Join(got, "") != in {
		t.Error("bytes lost")
	}
	if got[0] != "data: a\n\n" || got[len(got)-1] != "data: b\n\n" {
		t.Errorf("neighbours of the oversize event damaged: %q", got)
	}
	for _, ev := range got {
		if len(ev) > 16 {
			t.Errorf("piece of %d bytes > Max", len(ev))
		}
	}
}

// TestSplitterWhole: an event larger than the bound that the splitter
// had to hold across reads is emitted in raw pieces, marked by Raw, and
// given whole to Whole after its last one; at every way of cutting the
// stream into reads, each event is parsed once: emitted whole, or given to
// Whole. One larger than MaxWhole is never given.
func TestSplitterWhole(t *testing.T) {
	big := "data: " + strings.Repeat("x", 40) + "\r\n\r\n"
	huge := "data: " + strings.Repeat("y", 90) + "\n\n"
	in := "data: a\n\n" + big + "data: b\n\n" + huge + "data: c\n\n" + big[:20]
	for step := 1; step <= len(in); step++ {
		s := &Splitter{Max: 16, MaxWhole: 60}
		var (
			parsed []string // complete events and Whole's, in order
			lost   []int
			all    strings.Builder
		)
		s.Lost = func(n int) { lost = append(lost, n) }
		s.Whole = func(ev []byte) {
			if len(ev) > 60 {
				t.Fatalf("step %d: Whole given %d bytes", step, len(ev))
			}
			parsed = append(parsed, string(ev))
		}
		emit := func(ev []byte) error {
			all.Write(ev)
			if !s.Raw() {
				parsed = append(parsed, string(ev))
			}
			return nil
		}
		for i := 0; i < len(in); i += step {
			_ = s.Feed([]byte(in[i:min(i+step, len(in))]), emit)
		}
		_ = s.Flush(emit)
		if all.String() != in {
			t.Fatalf("step %d: bytes changed", step)
		}
		// The huge event, when held across reads, is counted instead.
		if inOne := slices.Contains(parsed, huge); inOne == (len(lost) == 1) || !inOne && lost[0] != len(huge) {
			t.Fatalf("step %d: huge event parsed %v, lost %v", step, inOne, lost)
		}
		// A read that ends between the CR and the LF of the big event's
		// CRLF leaves that LF to a piece of its own (see Splitter); the
		// huge event is parsed only when it came in one read.
		parsed = slices.DeleteFunc(parsed, func(ev string) bool { return ev == "\n" || ev == huge })
		for i, ev := range parsed {
			if ev == strings.TrimSuffix(big, "\n") {
				parsed[i] = big
			}
		}
		if want := []string{"data: a\n\n", big, "data: b\n\n", "data: c\n\n", big[:20]}; !slices.Equal(parsed, want) {
			t.Fatalf("step %d: parsed %q, want %q", step, parsed, want)
		}
	}
}

// TestSplitterBigEventGoesOnAsItComes: once an event has outgrown the
// bound, each later read of it is emitted at once, not held until the
// bound fills again.
func TestSplitterBigEventGoesOnAsItComes(t *testing.T) {
	s := &Splitter{Max: 16}
	var emitted int
	emit := func(ev []byte) error { emitted += len(ev); return nil }
	in := "data: " + strings.Repeat("x", 100) + "\n\n"
	fed := 0
	for i := 0; i < len(in); i += 7 {
		chunk := in[i:min(i+7, len(in))]
		_ = s.Feed([]byte(chunk), emit)
		fed += len(chunk)
		if fed > 16 && emitted != fed {
			t.Fatalf("after %d bytes fed, %d emitted (%d held)", fed, emitted, len(s.buf))
		}
	}
}

func TestSplitterEmitError(t *testing.T) {
	errStop := errors.New("client gone")
	s := &Splitter{}
	err := s.Feed([]byte("data: a\n\ndata: b\n\n"), func([]byte) error { return errStop })
	if !errors.Is(err, errStop) {
		t.Fatalf("err = %v", err)
	}
}

func TestSplitterNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	b := readGolden(t, "openai_chat_stream.sse")
	s := NewSplitter(FormatOpenAISSE)
	emit := func([]byte) error { return nil }
	feed := func() {
		for p := b; len(p) > 0; {
			n := min(37, len(p))
			_ = s.Feed(p[:n], emit)
			p = p[n:]
		}
		_ = s.Flush(emit)
	}
	feed() // warm up the buffer
	if n := testing.AllocsPerRun(50, feed); n != 0 {
		t.Errorf("allocs per stream = %v, want 0", n)
	}
}

// TestSplitterReadsABigEventBeforeItsLastPiece: an event larger than the
// bound is given to Whole before its last piece is emitted (a stream's
// final event is then known before the client has its last bytes), and
// even when that piece cannot be written (a client that left).
func TestSplitterReadsABigEventBeforeItsLastPiece(t *testing.T) {
	in := "data: " + strings.Repeat("x", 40) + "\n\n"
	var calls []string
	s := &Splitter{Max: 16}
	s.Whole = func(ev []byte) { calls = append(calls, "whole "+strconv.Itoa(len(ev))) }
	gone := errors.New("client gone")
	emit := func(ev []byte) error {
		calls = append(calls, "emit")
		if strings.HasSuffix(string(ev), "\n\n") {
			return gone
		}
		return nil
	}
	_ = s.Feed([]byte(in[:20]), emit)
	if err := s.Feed([]byte(in[20:]), emit); !errors.Is(err, gone) {
		t.Fatalf("Feed = %v, want the emit's error", err)
	}
	if want := []string{"emit", "whole 48", "emit"}; !slices.Equal(calls, want) {
		t.Fatalf("calls %v, want %v", calls, want)
	}
}
