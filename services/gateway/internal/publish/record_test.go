package publish

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/prometheus/client_golang/prometheus"
)

func TestRecordRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name, subject, id string
		data              []byte
	}{
		{"plain", "llmproxy.v1.request.completed.k1", "req-1", []byte(`{"a":1}`)},
		{"empty id and data", "s", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := appendRecord(nil, tc.subject, tc.id, tc.data)
			if len(b) != recordSize(tc.subject, tc.id, tc.data) {
				t.Fatalf("size %d, want %d", len(b), recordSize(tc.subject, tc.id, tc.data))
			}
			s, id, data, err := decodeRecord(b)
			if err != nil || s != tc.subject || id != tc.id || !bytes.Equal(data, tc.data) {
				t.Fatalf("decode = %q %q %q %v", s, id, data, err)
			}
			b[len(b)-1] ^= 1
			if _, _, _, err := decodeRecord(b); err == nil && len(tc.data) > 0 {
				t.Fatal("flipped bit not detected")
			}
		})
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, "a.b", "id", []byte("data")))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, id, data, err := decodeRecord(b)
		if err != nil {
			return
		}
		if again := appendRecord(nil, s, id, data); !bytes.Equal(again, b) {
			t.Fatalf("decoded record does not re-encode to its input")
		}
	})
}

func TestRecoverTruncatesTornRecord(t *testing.T) {
	dir := t.TempDir()
	o := Options{}.withDefaults()
	m, _ := newMetrics(prometheus.NewRegistry())
	ob, err := openOutbox(dir, o, m)
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	var ends []int
	for i := range 3 {
		buf = appendRecord(buf, "s", event(i).RequestID, []byte("payload"))
		ends = append(ends, len(buf))
	}
	ob.append(buf, ends)
	if err := ob.closeFiles(); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of the next write leaves half a record.
	seg := filepath.Join(dir, segmentName(0))
	half := appendRecord(nil, "s", "req-torn", []byte("payload"))
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(half[:len(half)/2])
	f.Close()

	ob, err = openOutbox(dir, o, m)
	if err != nil {
		t.Fatal(err)
	}
	defer ob.closeFiles()
	if got := ob.depth(); got != 3 {
		t.Fatalf("recovered %d records, want 3", got)
	}
	if st, _ := os.Stat(seg); st.Size() != int64(len(buf)) {
		t.Fatalf("segment is %d bytes after recovery, want %d", st.Size(), len(buf))
	}
	recs, err := ob.read(ob.ackedPos(), 10, readLimit)
	if err != nil || len(recs) != 3 || recs[2].msgID != event(2).RequestID {
		t.Fatalf("read %d records, err %v", len(recs), err)
	}
}

// TestRecoverKeepsRecordsAfterDamage: bytes damaged in the middle of a
// segment (not a crash's torn tail) lose the records they hit and no
// other: recovery cuts them out and keeps the records after them, which a
// truncation at the damage would have dropped with their usage.
func TestRecoverKeepsRecordsAfterDamage(t *testing.T) {
	var (
		buf    []byte
		starts []int
	)
	for i := range 6 {
		starts = append(starts, len(buf))
		buf = appendRecord(buf, "s", event(i).RequestID, bytes.Repeat([]byte{'a' + byte(i)}, 100+i))
	}
	starts = append(starts, len(buf))
	tests := []struct {
		name   string
		damage func([]byte) []byte
		want   []int
	}{
		{"a byte of a body flipped", func(b []byte) []byte { b[starts[2]+40] ^= 0xff; return b }, []int{0, 1, 3, 4, 5}},
		{"a length garbled", func(b []byte) []byte { b[starts[1]+2] = 0x7f; return b }, []int{0, 2, 3, 4, 5}},
		{"two records zeroed", func(b []byte) []byte { clear(b[starts[2]:starts[4]]); return b }, []int{0, 1, 4, 5}},
		{"stray bytes between records", func(b []byte) []byte {
			return slices.Concat(b[:starts[3]], []byte("garbage"), b[starts[3]:])
		}, []int{0, 1, 2, 3, 4, 5}},
		{"the first record hit", func(b []byte) []byte { b[5] ^= 1; return b }, []int{1, 2, 3, 4, 5}},
		{"the last record hit", func(b []byte) []byte { b[starts[5]+20] ^= 1; return b }, []int{0, 1, 2, 3, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, segmentName(0)), tt.damage(slices.Clone(buf)), 0o600); err != nil {
				t.Fatal(err)
			}
			m, _ := newMetrics(prometheus.NewRegistry())
			var logged bytes.Buffer
			o := Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))}.withDefaults()
			ob, err := openOutbox(dir, o, m)
			if err != nil {
				t.Fatal(err)
			}
			defer ob.closeFiles()
			// Damage is cut out and said so; only the last record's,
			// which nothing follows, reads as a torn tail.
			cuts := tt.name != "the last record hit"
			if l := logged.String(); strings.Contains(l, "cutting out damaged bytes") != cuts || strings.Contains(l, "truncating") == cuts {
				t.Errorf("log:\n%s", l)
			}
			recs, err := ob.read(ob.ackedPos(), 100, readLimit)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range recs {
				got = append(got, r.msgID)
			}
			var want []string
			for _, i := range tt.want {
				want = append(want, event(i).RequestID)
			}
			if !slices.Equal(got, want) || ob.depth() != int64(len(want)) {
				t.Fatalf("recovered %v (depth %d), want %v", got, ob.depth(), want)
			}
			// The repair is on disk: a second recovery reads the same.
			if err := ob.closeFiles(); err != nil {
				t.Fatal(err)
			}
			ob2, err := openOutbox(dir, Options{}.withDefaults(), m)
			if err != nil {
				t.Fatal(err)
			}
			defer ob2.closeFiles()
			if d := ob2.depth(); d != int64(len(want)) {
				t.Fatalf("second recovery: depth %d, want %d", d, len(want))
			}
		})
	}
}

// TestEncodeCutsAnEventPastTheRecordBound: an event larger than an outbox
// record may be is encoded with its request body cut (null) and marked
// truncated, its usage and ids kept; a small one goes into its record as
// Marshal encodes it.
func TestEncodeCutsAnEventPastTheRecordBound(t *testing.T) {
	p := &Publisher{log: slog.New(slog.DiscardHandler)}
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	p.m = m
	small := event(1)
	want, err := small.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	buf, ok := p.encode([]byte("prefix"), small)
	if !ok {
		t.Fatal("small event not encoded")
	}
	subject, id, data, err := decodeRecord(buf[len("prefix"):])
	if err != nil || subject != events.Subject(small.KeyID) || id != small.RequestID || !bytes.Equal(data, want) {
		t.Fatalf("small event's record: %q %q %v, data equal %v", subject, id, err, bytes.Equal(data, want))
	}

	defer func(n int) { maxRecordBody = n }(maxRecordBody)
	maxRecordBody = 1 << 20
	huge := bigEvent(2, maxRecordBody)
	buf, ok = p.encode(nil, huge)
	if !ok {
		t.Fatal("huge event dropped")
	}
	if len(buf) > recordHeaderSize+maxRecordBody {
		t.Fatalf("record of %d bytes", len(buf))
	}
	_, id, data, err = decodeRecord(buf)
	if err != nil || id != huge.RequestID {
		t.Fatalf("huge event's record: %q %v", id, err)
	}
	got, err := events.Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Truncated || string(got.RequestBody) != "null" || got.Usage != huge.Usage || got.KeyID != huge.KeyID {
		t.Fatalf("huge event: truncated %v body %.20s usage %+v", got.Truncated, got.RequestBody, got.Usage)
	}
}

// TestRecoverAfterLargeRandomDamage: megabytes of random bytes (a misplaced
// disk block) between records are cut out and the record after them kept;
// the search looks at each offset's header before any checksum (a checksum
// at each plausible offset took 20 s for 16 MiB of damage).
func TestRecoverAfterLargeRandomDamage(t *testing.T) {
	junk := make([]byte, 4<<20)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range junk {
		junk[i] = byte(rnd.Uint32())
	}
	var buf []byte
	buf = appendRecord(buf, "llmproxy.v1.request.completed.k", event(0).RequestID, []byte("before"))
	buf = append(buf, junk...)
	buf = appendRecord(buf, "llmproxy.v1.request.completed.k", event(1).RequestID, []byte("after"))
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, segmentName(0)), buf, 0o600); err != nil {
		t.Fatal(err)
	}
	m, _ := newMetrics(prometheus.NewRegistry())
	ob, err := openOutbox(dir, Options{}.withDefaults(), m)
	if err != nil {
		t.Fatal(err)
	}
	defer ob.closeFiles()
	recs, err := ob.read(ob.ackedPos(), 10, readLimit)
	if err != nil || len(recs) != 2 || recs[1].msgID != event(1).RequestID {
		t.Fatalf("recovered %d records (%v)", len(recs), err)
	}
}
