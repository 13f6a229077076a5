package publish

import (
	"bytes"
	"fmt"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReadRecordsLargerThanLimit reads back, at every window, an outbox in
// which records larger than the read limit sit first, between small ones,
// side by side and last.
func TestReadRecordsLargerThanLimit(t *testing.T) {
	const (
		limit   = 4096
		subject = "llmproxy.v1.request.completed.k"
	)
	sizes := []int{
		3 * limit, // first
		10, 20, 30,
		limit + 1, // between
		40,
		limit - recordSize(subject, "req-000006", nil), // exactly limit bytes
		2 * limit, 5 * limit, // side by side
		50, 60,
		limit / 2, limit / 2, limit / 2, // straddling the chunk's end
		7 * limit, // last
	}
	type want struct {
		id   string
		data []byte
	}
	var (
		buf   []byte
		ends  []int
		wants []want
	)
	for i, n := range sizes {
		w := want{id: fmt.Sprintf("req-%06d", i), data: bytes.Repeat([]byte{byte('a' + i%26)}, n)}
		buf = appendRecord(buf, subject, w.id, w.data)
		ends = append(ends, len(buf))
		wants = append(wants, w)
	}

	for _, window := range []int{1, 2, 3, 1024} {
		t.Run(fmt.Sprintf("window %d", window), func(t *testing.T) {
			m, _ := newMetrics(prometheus.NewRegistry())
			ob, err := openOutbox(t.TempDir(), Options{}.withDefaults(), m)
			if err != nil {
				t.Fatal(err)
			}
			defer ob.closeFiles()
			if dropped := ob.append(buf, ends); dropped != 0 {
				t.Fatalf("%d records dropped", dropped)
			}

			var got []record
			pos := ob.ackedPos()
			for range 2 * len(sizes) {
				recs, err := ob.read(pos, window, limit)
				if err != nil {
					t.Fatalf("read at %+v: %v", pos, err)
				}
				if len(recs) == 0 {
					break
				}
				if len(recs) > window {
					t.Fatalf("read %d records, window %d", len(recs), window)
				}
				for _, r := range recs {
					if r.at != pos {
						t.Fatalf("record at %+v, want %+v", r.at, pos)
					}
					pos = r.end
				}
				got = append(got, recs...)
			}
			if len(got) != len(wants) {
				t.Fatalf("read %d records, want %d", len(got), len(wants))
			}
			for i, r := range got {
				if r.msgID != wants[i].id || !bytes.Equal(r.data, wants[i].data) {
					t.Fatalf("record %d: id %s, %d bytes; want %s, %d bytes", i, r.msgID, len(r.data), wants[i].id, len(wants[i].data))
				}
			}
			if pos.seq != uint64(len(sizes)) {
				t.Fatalf("ended at sequence %d, want %d", pos.seq, len(sizes))
			}
		})
	}
}

// TestOutboxFilesAreOwnersOnly: the outbox holds request bodies: its
// directory and files are the owner's alone, as the JetStream store's are.
func TestOutboxFilesAreOwnersOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	p := newPublisher(t, &flakyJS{}, dir, testOptions(prometheus.NewRegistry()))
	p.Publish(event(1))
	waitFor(t, 5*time.Second, "a segment", func() bool { return len(segmentFiles(t, dir)) > 0 })
	closePublisher(t, p)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s: mode %v, want none for group or others", path, perm)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
