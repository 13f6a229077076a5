package publish

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The outbox is a directory of segment files, each an append-only run of
// records named after the sequence number of its first record
// ("00000000000000000042.seg"), plus a small "acked" file holding the
// position of the first record JetStream has not acknowledged yet.
//
// Records are appended with one write(2) per batch, so a process crash loses
// nothing that was appended; the files are fsynced every SyncInterval and on
// close, so a machine crash loses at most one interval. A segment is deleted
// once every record in it is acknowledged, and when everything is
// acknowledged the whole directory is emptied at the next sync.
//
// When the segments reach maxBytes, further records wait in memory (up to
// maxMem bytes, oldest first) and move to disk as acknowledgements free
// room; records past that bound are dropped and counted.
const (
	segmentExt  = ".seg"
	ackFileName = "acked"
	ackFileSize = 28
)

// DurableDelay is how long the outbox keeps an event after JetStream
// acknowledged it. A JetStream server acknowledges a message once it is in
// its file store's buffers (written out within milliseconds) and fsyncs
// the store only every sync_interval; a machine that loses power between
// the two loses the acknowledged message unless the outbox still has it.
// The server the outbox publishes to must therefore fsync at least this
// often, with a margin for the write-behind and the fsync itself: the
// single binary's embedded server syncs every DurableDelay/2.
const DurableDelay = 2 * time.Second

type segment struct {
	id    uint64 // sequence number of the first record; names the file
	f     *os.File
	size  int64  // bytes of whole records
	count uint64 // records
	dirty bool   // written since the last fsync
}

// ackMark is an acknowledged position and when it was acknowledged.
type ackMark struct {
	at  time.Time
	pos position
}

// outbox is safe for concurrent use. Appends come from the writer goroutine
// and from Publish callers that spill; reads and acks from the sender.
type outbox struct {
	dir      string
	maxBytes int64
	segBytes int64
	maxMem   int64
	log      *slog.Logger
	m        *metrics

	ackFile *os.File

	mu      sync.Mutex
	segs    []*segment // oldest first; the last one takes appends
	nextSeq uint64
	acked   position // first record not acknowledged
	// durable is the acknowledged position the outbox trusts across a
	// crash: acked as it was durableDelay ago. A JetStream server acks a
	// message before its file store has written it, so a server dying in
	// the same instant (the embedded one dies with this process) can lose
	// acked messages; keeping them here a little longer means a restart
	// publishes them again (the stream's duplicate window and the meter's
	// idempotence absorb the ones it did keep).
	durable      position
	durableDelay time.Duration
	marks        []ackMark // acks not yet durable, oldest first
	ackedDirty   bool
	diskBytes    int64
	mem          [][]byte // encoded records waiting for room on disk
	memBytes     int64
	// writeErr is the last write's failure while records wait in memory
	// for it (nil once a write went through): see writeError.
	writeErr   error
	lastWarn   time.Time
	lastErrLog time.Time
	sealed     bool // the last segment takes no more appends
	warnEvery  time.Duration
}

func openOutbox(dir string, o Options, m *metrics) (*outbox, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create outbox dir: %w", err)
	}
	ob := &outbox{
		dir:       dir,
		maxBytes:  o.MaxOutboxBytes,
		segBytes:  o.SegmentBytes,
		maxMem:    o.MaxMemoryBytes,
		log:       o.Logger,
		m:         m,
		warnEvery: o.WarnInterval,
		// durableDelay covers the NATS server's write-behind and fsync
		// (see DurableDelay).
		durableDelay: DurableDelay,
	}
	af, err := os.OpenFile(filepath.Join(dir, ackFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open outbox ack file: %w", err)
	}
	if err := lockDir(af); err != nil {
		af.Close()
		return nil, err
	}
	ob.ackFile = af
	if err := ob.recover(); err != nil {
		ob.closeFiles()
		return nil, err
	}
	ob.updateGaugesLocked()
	return ob, nil
}

// readAckFile returns the acknowledged position stored in the ack file, or
// ok=false when there is none or it does not verify.
func (ob *outbox) readAckFile() (p position, ok bool) {
	var b [ackFileSize]byte
	if _, err := ob.ackFile.ReadAt(b[:], 0); err != nil {
		return position{}, false
	}
	if crc32.Checksum(b[:24], crcTable) != binary.LittleEndian.Uint32(b[24:]) {
		return position{}, false
	}
	p.seq = binary.LittleEndian.Uint64(b[0:])
	p.seg = binary.LittleEndian.Uint64(b[8:])
	p.off = int64(binary.LittleEndian.Uint64(b[16:]))
	return p, true
}

func (ob *outbox) writeAckFile(p position) error {
	var b [ackFileSize]byte
	binary.LittleEndian.PutUint64(b[0:], p.seq)
	binary.LittleEndian.PutUint64(b[8:], p.seg)
	binary.LittleEndian.PutUint64(b[16:], uint64(p.off))
	binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[:24], crcTable))
	if _, err := ob.ackFile.WriteAt(b[:], 0); err != nil {
		return err
	}
	return ob.ackFile.Sync()
}

// recover loads the segments left in dir, truncates a record torn by a
// crash, and positions the acknowledged mark.
func (ob *outbox) recover() error {
	names, err := os.ReadDir(ob.dir)
	if err != nil {
		return fmt.Errorf("read outbox dir: %w", err)
	}
	var ids []uint64
	for _, de := range names {
		name := de.Name()
		if !strings.HasSuffix(name, segmentExt) {
			continue
		}
		id, err := strconv.ParseUint(strings.TrimSuffix(name, segmentExt), 10, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)

	ack, ackOK := ob.readAckFile()
	ackFound := false
	for _, id := range ids {
		seg, boundarySeq, err := ob.loadSegment(id, ack, ackOK)
		if err != nil {
			return err
		}
		if ackOK && id == ack.seg && boundarySeq == ack.seq {
			ackFound = true
		}
		ob.segs = append(ob.segs, seg)
		ob.diskBytes += seg.size
		if end := seg.id + seg.count; end > ob.nextSeq {
			ob.nextSeq = end
		}
	}
	if ackOK && ack.seq > ob.nextSeq && len(ob.segs) == 0 {
		ob.nextSeq = ack.seq
	}
	switch {
	case ackFound:
		ob.acked = ack
	case len(ob.segs) > 0:
		// No usable mark: republish everything; the stream's duplicate
		// window and the meter's idempotence absorb what was sent before.
		ob.acked = position{seq: ob.segs[0].id, seg: ob.segs[0].id}
	default:
		ob.acked = position{seq: ob.nextSeq, seg: ob.nextSeq}
	}
	ob.durable = ob.acked
	ob.trimLocked()
	if n := ob.nextSeq - ob.acked.seq; n > 0 {
		ob.log.Info("event outbox recovered unacknowledged events", "dir", ob.dir, "events", n, "bytes", ob.diskBytes)
	}
	return nil
}

// loadSegment opens and verifies one segment file. A record that does not
// verify ends the segment when no whole record follows it (a record torn
// by a crash, the file's last): the file is truncated there. One followed
// by whole records (bytes damaged on disk) is cut out, and the records
// after it are kept. boundarySeq is the sequence number at ack.off when
// that offset is a record boundary of this segment.
func (ob *outbox) loadSegment(id uint64, ack position, ackOK bool) (*segment, uint64, error) {
	path := filepath.Join(ob.dir, segmentName(id))
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("open outbox segment: %w", err)
	}
	fail := func(what string, err error) (*segment, uint64, error) {
		f.Close()
		return nil, 0, fmt.Errorf("%s outbox segment %s: %w", what, path, err)
	}
	st, err := f.Stat()
	if err != nil {
		return fail("stat", err)
	}
	size := st.Size()
	seg := &segment{id: id, f: f}
	boundarySeq := ^uint64(0)
	// Once bytes are cut out, the acknowledged mark's offset no longer
	// names a position here: recovery then republishes the outbox whole.
	cut := int64(0) // bytes cut out so far
	// Reads stop at size: past it, after a cut, lie the moved bytes' old
	// copies, which the truncation below drops.
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, size), 256<<10)
	var buf []byte
	for {
		if ackOK && cut == 0 && ack.seg == id && ack.off == seg.size {
			boundarySeq = id + seg.count
		}
		hdr, err := r.Peek(recordHeaderSize)
		if err != nil {
			if len(hdr) > 0 {
				ob.log.Warn("event outbox: truncating torn record", "segment", path, "offset", seg.size)
			}
			break
		}
		n, err := peekRecordLen(hdr)
		if err == nil {
			buf = slices.Grow(buf[:0], n)[:n]
			if _, err = io.ReadFull(r, buf); err == nil {
				_, _, _, err = decodeRecord(buf)
			}
		}
		if err == nil {
			seg.size += int64(n)
			seg.count++
			continue
		}
		next, err := findRecord(f, seg.size+1, size)
		if err != nil {
			return fail("read", err)
		}
		if next < 0 {
			ob.log.Warn("event outbox: truncating unreadable record", "segment", path, "offset", seg.size+cut)
			break
		}
		// Offsets are the file's as it was found.
		ob.log.Warn("event outbox: cutting out damaged bytes; the records after them are kept",
			"segment", path, "offset", seg.size+cut, "bytes", next-seg.size)
		// In place: a crash during the move leaves records twice in the
		// file, published twice at the next start, which the stream's
		// duplicate window and the meter's idempotence absorb, as they do
		// the republish of an outbox without a usable mark.
		if err := moveDown(f, next, seg.size, size); err != nil {
			return fail("repair", err)
		}
		cut += next - seg.size
		size -= next - seg.size
		r.Reset(io.NewSectionReader(f, seg.size, size-seg.size))
	}
	if st.Size() != seg.size {
		if err := f.Truncate(seg.size); err != nil {
			return fail("truncate", err)
		}
		if err := f.Sync(); err != nil {
			return fail("sync", err)
		}
	}
	return seg, boundarySeq, nil
}

// findRecord returns the offset of the first whole record of f at or after
// from and before size, or -1 when there is none. Each offset is first
// looked at through its header alone (a length that fits the file, names
// of a subject's and a request id's sizes, a subject that starts in
// printable ASCII), so that damaged bytes, which rarely pass all of that,
// cost no checksum of what follows them.
func findRecord(f *os.File, from, size int64) (int64, error) {
	const (
		names = recordHeaderSize + 4 // the header and the two name lengths
		probe = names + 8            // and the subject's first bytes
	)
	r := bufio.NewReaderSize(io.NewSectionReader(f, from, max(size-from, 0)), 256<<10)
	var rec []byte
	for off := from; size-off >= names; off++ {
		hdr, err := r.Peek(int(min(probe, size-off)))
		if err != nil {
			return -1, err
		}
		if n, ok := plausibleRecord(hdr, size-off); ok {
			rec = slices.Grow(rec[:0], n)[:n]
			if _, err := f.ReadAt(rec, off); err != nil {
				return -1, err
			}
			if _, _, _, err := decodeRecord(rec); err == nil {
				return off, nil
			}
		}
		if _, err := r.Discard(1); err != nil {
			return -1, err
		}
	}
	return -1, nil
}

// plausibleRecord reports whether hdr, the first bytes at an offset with
// left bytes to the file's end, could start a record, and its length.
func plausibleRecord(hdr []byte, left int64) (int, bool) {
	n, err := peekRecordLen(hdr)
	if err != nil || int64(n) > left || len(hdr) < recordHeaderSize+4 {
		return 0, false
	}
	sl := int(binary.LittleEndian.Uint16(hdr[recordHeaderSize:]))
	il := int(binary.LittleEndian.Uint16(hdr[recordHeaderSize+2:]))
	if sl == 0 || sl > maxNameLen || il > maxNameLen || recordHeaderSize+4+sl+il > n {
		return 0, false
	}
	for _, c := range hdr[recordHeaderSize+4 : min(len(hdr), recordHeaderSize+4+sl)] {
		if c < 0x21 || c > 0x7e {
			return 0, false
		}
	}
	return n, true
}

// maxNameLen bounds a subject and a request id in a record that recovery
// takes for whole: the gateway's are far shorter.
const maxNameLen = 1024

// moveDown copies f's bytes [from, size) to offset to (< from).
func moveDown(f *os.File, from, to, size int64) error {
	buf := make([]byte, 1<<20)
	for from < size {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), size-from)], from)
		if n > 0 {
			if _, err := f.WriteAt(buf[:n], to); err != nil {
				return err
			}
			from += int64(n)
			to += int64(n)
		}
		if err != nil && !(errors.Is(err, io.EOF) && from >= size) {
			return err
		}
	}
	return nil
}

func segmentName(id uint64) string {
	return fmt.Sprintf("%020d%s", id, segmentExt)
}

// append stores encoded records: buf holds them back to back and ends[i] is
// the offset just past record i. It returns how many were dropped because
// both the disk and the memory bound were reached.
func (ob *outbox) append(buf []byte, ends []int) (dropped int) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	i := 0
	if len(ob.mem) == 0 {
		k := 0
		for k < len(ends) && ob.diskBytes+int64(ends[k]) <= ob.maxBytes {
			k++
		}
		if k > 0 {
			if err := ob.writeLocked(buf[:ends[k-1]], k); err != nil {
				ob.writeFailedLocked(err)
				k = 0
			}
		}
		i = k
	}
	start := 0
	if i > 0 {
		start = ends[i-1]
	}
	for ; i < len(ends); i++ {
		rec := buf[start:ends[i]]
		start = ends[i]
		if ob.memBytes+int64(len(rec)) > ob.maxMem {
			dropped++
			continue
		}
		ob.mem = append(ob.mem, slices.Clone(rec))
		ob.memBytes += int64(len(rec))
	}
	if dropped > 0 {
		ob.m.dropped.Add(float64(dropped))
	}
	ob.updateGaugesLocked()
	return dropped
}

// writeLocked appends n whole records in b to the last segment, starting a
// new segment when the last one is full.
func (ob *outbox) writeLocked(b []byte, n int) error {
	var seg *segment
	if len(ob.segs) > 0 {
		seg = ob.segs[len(ob.segs)-1]
	}
	if seg == nil || ob.sealed || (seg.size > 0 && seg.size+int64(len(b)) > ob.segBytes) {
		ob.sealed = false
		f, err := os.OpenFile(filepath.Join(ob.dir, segmentName(ob.nextSeq)), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("create outbox segment: %w", err)
		}
		seg = &segment{id: ob.nextSeq, f: f}
		ob.segs = append(ob.segs, seg)
	}
	if _, err := seg.f.WriteAt(b, seg.size); err != nil {
		// Cut a partial write back so the segment ends on a record.
		_ = seg.f.Truncate(seg.size)
		return err
	}
	seg.size += int64(len(b))
	seg.count += uint64(n)
	seg.dirty = true
	ob.nextSeq += uint64(n)
	ob.diskBytes += int64(len(b))
	return nil
}

// flushMemLocked moves records waiting in memory to disk while they fit, or
// all of them when force is set.
func (ob *outbox) flushMemLocked(force bool) {
	for len(ob.mem) > 0 {
		rec := ob.mem[0]
		if !force && ob.diskBytes+int64(len(rec)) > ob.maxBytes {
			return
		}
		if err := ob.writeLocked(rec, 1); err != nil {
			ob.writeFailedLocked(err)
			return
		}
		ob.mem[0] = nil
		ob.mem = ob.mem[1:]
		ob.memBytes -= int64(len(rec))
	}
	ob.mem = nil
	ob.writeErr = nil
}

// writeError is the failure of the outbox's writes while events wait in
// memory for them (a full or read-only disk): those events die with the
// process. nil while the outbox writes.
func (ob *outbox) writeError() error {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if len(ob.mem) == 0 {
		return nil
	}
	return ob.writeErr
}

// read returns up to max records starting at from, reading at most about
// limit bytes. The records' data is freshly allocated and owned by the
// caller. It returns no records when from is at the end of the outbox.
func (ob *outbox) read(from position, max int, limit int) ([]record, error) {
	ob.mu.Lock()
	seg := ob.findLocked(&from)
	if seg == nil {
		ob.mu.Unlock()
		return nil, nil
	}
	f, size := seg.f, seg.size
	ob.mu.Unlock()

	want := min(size-from.off, int64(limit))
	chunk := make([]byte, want)
	if _, err := f.ReadAt(chunk, from.off); err != nil {
		return nil, fmt.Errorf("read outbox segment: %w", err)
	}
	var recs []record
	pos := from
	for len(recs) < max {
		// A record larger than limit was read on its own and ends past
		// chunk: the records after it are for the next call.
		rel := pos.off - from.off
		if rel >= int64(len(chunk)) {
			break
		}
		b := chunk[rel:]
		if len(b) < recordHeaderSize {
			break
		}
		n, err := peekRecordLen(b)
		if err != nil {
			return recs, fmt.Errorf("outbox segment %d offset %d: %w", pos.seg, pos.off, err)
		}
		if n > len(b) {
			if len(recs) > 0 {
				break
			}
			// One record larger than limit: read it whole, and alone.
			big := make([]byte, n)
			if _, err := f.ReadAt(big, pos.off); err != nil {
				return nil, fmt.Errorf("read outbox segment: %w", err)
			}
			b = big
		}
		subject, msgID, data, err := decodeRecord(b[:n])
		if err != nil {
			return recs, fmt.Errorf("outbox segment %d offset %d: %w", pos.seg, pos.off, err)
		}
		end := position{seq: pos.seq + 1, seg: pos.seg, off: pos.off + int64(n)}
		recs = append(recs, record{subject: subject, msgID: msgID, data: data, at: pos, end: end})
		pos = end
	}
	return recs, nil
}

// findLocked returns the segment holding the record at *p, moving *p to the
// start of the next segment when it points past the end of its own. It
// returns nil when there is nothing to read at *p.
func (ob *outbox) findLocked(p *position) *segment {
	i := slices.IndexFunc(ob.segs, func(s *segment) bool { return s.id == p.seg })
	if i < 0 {
		// The segment was emptied and removed; reading resumes in the
		// first segment created after it.
		i = slices.IndexFunc(ob.segs, func(s *segment) bool { return s.id >= p.seq })
		if i < 0 {
			return nil
		}
		*p = position{seq: ob.segs[i].id, seg: ob.segs[i].id}
	}
	for p.off >= ob.segs[i].size {
		if i == len(ob.segs)-1 {
			return nil
		}
		i++
		*p = position{seq: ob.segs[i].id, seg: ob.segs[i].id}
	}
	return ob.segs[i]
}

// ackedPos returns the position of the first record not acknowledged.
func (ob *outbox) ackedPos() position {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.acked
}

// ack records that every record before p is acknowledged, deletes the
// segments that holds only such records and lets waiting records in.
func (ob *outbox) ack(p position) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	ob.acked = p
	now := time.Now()
	if n := len(ob.marks); n > 0 && now.Sub(ob.marks[n-1].at) < 50*time.Millisecond {
		ob.marks[n-1].pos = p
	} else {
		ob.marks = append(ob.marks, ackMark{at: now, pos: p})
	}
	ob.trimLocked()
	ob.flushMemLocked(false)
	ob.updateGaugesLocked()
}

// trimLocked deletes the fully acknowledged segments before the last one,
// and the last one too when records wait in memory for its room. (An idle
// outbox is emptied by sync instead, so that a quiet gateway does not create
// and delete a file per event.)
func (ob *outbox) trimLocked() {
	for len(ob.segs) > 1 || len(ob.segs) == 1 && len(ob.mem) > 0 {
		s := ob.segs[0]
		if s.id == ob.durable.seg && ob.durable.off < s.size || s.id > ob.durable.seg {
			return
		}
		ob.removeSegmentLocked(s)
		ob.segs = ob.segs[1:]
	}
}

func (ob *outbox) removeSegmentLocked(s *segment) {
	_ = s.f.Close()
	if err := os.Remove(filepath.Join(ob.dir, segmentName(s.id))); err != nil {
		ob.log.Error("event outbox: remove segment", "segment", segmentName(s.id), "err", err)
	}
	ob.diskBytes -= s.size
}

// sync runs on every SyncInterval: it moves waiting records to disk,
// empties a fully acknowledged outbox, fsyncs what was written and stores
// the acknowledged position. It reports whether records moved from memory
// to disk (the sender must then be woken).
func (ob *outbox) sync(now time.Time) (moved bool) {
	ob.mu.Lock()
	ob.advanceDurableLocked(now.Add(-ob.durableDelay))
	ob.trimLocked()
	before := ob.nextSeq
	ob.flushMemLocked(false)
	moved = ob.nextSeq != before
	if ob.durable.seq >= ob.nextSeq && len(ob.mem) == 0 && len(ob.segs) > 0 {
		for _, s := range ob.segs {
			ob.removeSegmentLocked(s)
		}
		ob.segs = nil
	}
	var files []*os.File
	for _, s := range ob.segs {
		if s.dirty {
			files = append(files, s.f)
			s.dirty = false
		}
	}
	ack, ackDirty := ob.durable, ob.ackedDirty
	ob.ackedDirty = false
	if len(ob.mem) > 0 && ob.writeErr == nil && now.Sub(ob.lastWarn) >= ob.warnEvery {
		ob.lastWarn = now
		ob.log.Error("event outbox full: events are held in memory and dropped past its bound until NATS acknowledges the backlog",
			"dir", ob.dir, "outbox_bytes", ob.diskBytes, "max_outbox_bytes", ob.maxBytes,
			"memory_events", len(ob.mem), "memory_bytes", ob.memBytes, "max_memory_bytes", ob.maxMem)
	}
	ob.updateGaugesLocked()
	ob.mu.Unlock()

	// A segment removed meanwhile is fully acknowledged; its sync error is
	// of no consequence.
	for _, f := range files {
		if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
			ob.log.Error("event outbox: fsync", "dir", ob.dir, "err", err)
		}
	}
	if ackDirty {
		if err := ob.writeAckFile(ack); err != nil {
			ob.log.Error("event outbox: write ack file", "dir", ob.dir, "err", err)
		}
	}
	return moved
}

// flush writes every record held in memory to disk, past the bound if need
// be, and fsyncs the segments written since their last sync: what was
// appended is on disk when it returns nil.
func (ob *outbox) flush() error {
	ob.mu.Lock()
	ob.flushMemLocked(true)
	var files []*os.File
	for _, s := range ob.segs {
		if s.dirty {
			files = append(files, s.f)
			s.dirty = false
		}
	}
	failed := len(ob.mem) > 0
	ob.updateGaugesLocked()
	ob.mu.Unlock()
	if failed {
		return errors.New("event outbox: records could not be written to disk")
	}
	for _, f := range files {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("event outbox: fsync: %w", err)
		}
	}
	return nil
}

// advanceDurableLocked makes durable every ack made at or before cutoff.
func (ob *outbox) advanceDurableLocked(cutoff time.Time) {
	i := 0
	for i < len(ob.marks) && !ob.marks[i].at.After(cutoff) {
		i++
	}
	if i == 0 {
		return
	}
	ob.durable = ob.marks[i-1].pos
	ob.marks = append(ob.marks[:0], ob.marks[i:]...)
	ob.ackedDirty = true
}

// close writes every record still in memory to disk, past the bound if need
// be, syncs and closes the files. The outbox must not be used afterwards.
// Every ack counts as durable at close: the server is shut down cleanly
// after the publisher.
func (ob *outbox) close() error {
	ob.mu.Lock()
	if n := len(ob.marks); n > 0 {
		ob.durable, ob.marks, ob.ackedDirty = ob.marks[n-1].pos, nil, true
	}
	ob.flushMemLocked(true)
	lost := len(ob.mem)
	ob.mu.Unlock()
	ob.sync(time.Now())
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if lost > 0 {
		ob.m.dropped.Add(float64(lost))
		ob.log.Error("event outbox: events lost at close", "dir", ob.dir, "events", lost)
	}
	return ob.closeFiles()
}

func (ob *outbox) closeFiles() error {
	var errs []error
	for _, s := range ob.segs {
		errs = append(errs, s.f.Close())
	}
	ob.segs = nil
	errs = append(errs, ob.ackFile.Close())
	return errors.Join(errs...)
}

// depth returns the number of records not acknowledged, on disk and in
// memory.
func (ob *outbox) depth() int64 {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.depthLocked()
}

func (ob *outbox) depthLocked() int64 {
	return int64(ob.nextSeq-ob.acked.seq) + int64(len(ob.mem))
}

func (ob *outbox) updateGaugesLocked() {
	ob.m.depth.Set(float64(ob.depthLocked()))
	ob.m.bytes.Set(float64(ob.diskBytes))
}

// nextSegment returns the position of the first record of the segment
// after the one p is in. When p is in the last segment, that segment is
// sealed so that the next append starts the segment nextSegment points to.
func (ob *outbox) nextSegment(p position) position {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	for _, s := range ob.segs {
		if s.id > p.seg {
			return position{seq: s.id, seg: s.id}
		}
	}
	ob.sealed = true
	return position{seq: ob.nextSeq, seg: ob.nextSeq}
}

// writeFailedLocked logs a failed outbox write at most once per warnEvery;
// the records stay in memory and are written again on the next sync.
func (ob *outbox) writeFailedLocked(err error) {
	ob.writeErr = err
	now := time.Now()
	if now.Sub(ob.lastErrLog) < ob.warnEvery {
		return
	}
	ob.lastErrLog = now
	ob.log.Error("event outbox: write failed; holding events in memory", "dir", ob.dir, "err", err)
}
