package inflight

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// words counts a text's tokens as its words, so that the tests can say
// what a checkpoint's text is worth.
func words(s string) int { return len(strings.Fields(s)) }

func open(t *testing.T, dir string) (*Journal, []*events.RequestCompleted) {
	t.Helper()
	j, evs, err := Open(dir, Options{Count: words})
	if err != nil {
		t.Fatal(err)
	}
	return j, evs
}

func start(t *testing.T, j *Journal) {
	t.Helper()
	if err := j.Start(); err != nil {
		t.Fatal(err)
	}
}

func skeleton(id string, prompt int64) *events.RequestCompleted {
	return &events.RequestCompleted{
		Schema: events.SchemaRequestCompletedV1, RequestID: id, KeyID: "alpha", KeyName: "Alpha",
		Model: "m", Endpoint: "/v1/chat/completions", IsStream: true, StatusCode: 200,
		Timestamp: time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC), Reservation: 4096,
		Usage: events.Usage{PromptTokens: prompt},
	}
}

// leftOpen writes a journal in dir holding an open entry for each id, as
// a process killed with those streams running leaves it.
func leftOpen(t *testing.T, dir string, ids ...string) {
	t.Helper()
	j, _ := open(t, dir)
	start(t, j)
	for _, id := range ids {
		j.Open(skeleton(id, 1))
	}
	if err := j.Shut(); err != nil {
		t.Fatal(err)
	}
}

// TestRecoversTheStreamsLeftOpen: the entries a process did not close come
// back at the next Open as events billing what the streams had delivered by
// their last checkpoint; closed entries do not.
func TestRecoversTheStreamsLeftOpen(t *testing.T) {
	dir := t.TempDir()
	j, evs := open(t, dir)
	if len(evs) != 0 {
		t.Fatalf("a new journal recovered %d events", len(evs))
	}
	start(t, j)
	j.Open(skeleton("a", 40))
	j.Open(skeleton("b", 50))
	j.Open(skeleton("c", 60))
	j.Open(skeleton("d", 70))
	// a: two checkpoints of text (3 + 2 words), 10 bytes past them that
	// no checkpoint carried (at the counted rate: 5 words in 30 bytes).
	j.Progress("a", Checkpoint{Text: []byte("one two three "), Latency: 700 * time.Millisecond, TTFT: 90 * time.Millisecond})
	j.Progress("a", Checkpoint{Text: []byte("four five      "), Uncounted: 12, Latency: 1200 * time.Millisecond, TTFT: 90 * time.Millisecond})
	// b: the backend reported its prompt and its completion so far.
	j.Progress("b", Checkpoint{Text: []byte("x y "), PromptTokens: 33, PromptKnown: true, CompletionTokens: 9, CompletionKnown: true, Latency: time.Second})
	// c ended: its own event is in the outbox.
	j.Progress("c", Checkpoint{Text: []byte("z "), Latency: time.Second})
	j.Close("c")
	// d: opened, never checkpointed.
	// e: 6 words counted, but the request capped the engine at 4.
	j.Open(skeleton("e", 10))
	j.Progress("e", Checkpoint{Text: []byte("a b c d e f "), CompletionBound: 4, Latency: time.Second})
	if err := j.Shut(); err != nil {
		t.Fatal(err)
	}

	_, evs = open(t, dir)
	got := map[string]*events.RequestCompleted{}
	var order []string
	for _, ev := range evs {
		got[ev.RequestID] = ev
		order = append(order, ev.RequestID)
	}
	if strings.Join(order, ",") != "a,b,d,e" {
		t.Fatalf("recovered %v, want a,b,d,e in the order opened", order)
	}
	for _, ev := range evs {
		if ev.UsageSource != events.UsageSourceEstimated || ev.Error != ErrorCrashed {
			t.Errorf("%s: usage_source %q error %q", ev.RequestID, ev.UsageSource, ev.Error)
		}
		if ev.KeyID != "alpha" || ev.KeyName != "Alpha" || ev.Model != "m" || ev.Reservation != 4096 || ev.StatusCode != 200 || !ev.IsStream {
			t.Errorf("%s: the opened event's fields were not kept: %+v", ev.RequestID, ev)
		}
		if ev.Usage.TotalTokens != ev.Usage.PromptTokens+ev.Usage.CompletionTokens {
			t.Errorf("%s: total %d", ev.RequestID, ev.Usage.TotalTokens)
		}
		if _, err := ev.Marshal(); err != nil {
			t.Errorf("%s: %v", ev.RequestID, err)
		}
	}
	if u := got["a"].Usage; u.PromptTokens != 40 || u.CompletionTokens != 5+2 {
		t.Errorf("a: usage %+v, want prompt 40 (the estimate), completion 7 (5 counted, 12 bytes at 5 per 29)", u)
	}
	if a := got["a"]; a.LatencyMS != 1200 || a.TTFTMS != 90 {
		t.Errorf("a: latency %d ttft %d, want the last checkpoint's 1200 and 90", a.LatencyMS, a.TTFTMS)
	}
	if u := got["b"].Usage; u.PromptTokens != 33 || u.CompletionTokens != 9 {
		t.Errorf("b: usage %+v, want the backend's 33 and 9", u)
	}
	if u := got["d"].Usage; u.PromptTokens != 70 || u.CompletionTokens != 0 {
		t.Errorf("d: usage %+v, want the prompt estimate alone", u)
	}
	if u := got["e"].Usage; u.CompletionTokens != 4 {
		t.Errorf("e: usage %+v, want completion 4, the request's cap, not the 6 its text counts", u)
	}
}

// TestStartEmptiesTheJournal: once the caller has published what Open
// returned, Start empties the file; a second start recovers nothing.
func TestStartEmptiesTheJournal(t *testing.T) {
	dir := t.TempDir()
	leftOpen(t, dir, "a")
	j, evs := open(t, dir)
	if len(evs) != 1 {
		t.Fatalf("recovered %d events, want 1", len(evs))
	}
	start(t, j)
	if err := j.Shut(); err != nil {
		t.Fatal(err)
	}
	if _, evs = open(t, dir); len(evs) != 0 {
		t.Fatalf("recovered %d events after Start emptied the journal", len(evs))
	}
}

// TestShutEmptiesAJournalWithNothingOpen: a clean stop with every stream
// ended leaves an empty file.
func TestShutEmptiesAJournalWithNothingOpen(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, dir)
	start(t, j)
	for _, id := range []string{"a", "b"} {
		j.Open(skeleton(id, 1))
		j.Progress(id, Checkpoint{Text: []byte("w ")})
		j.Close(id)
	}
	if err := j.Shut(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil || fi.Size() != 0 {
		t.Fatalf("journal after a clean stop: %v, %v", fi, err)
	}
}

// TestTornLineIsSkipped: a crash in the middle of a write leaves half a
// line at the end; recovery reads every whole line before it.
func TestTornLineIsSkipped(t *testing.T) {
	dir := t.TempDir()
	leftOpen(t, dir, "a", "b")
	f, err := os.OpenFile(filepath.Join(dir, FileName), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The close of b, torn.
	if _, err := f.WriteString(`{"id":"b","clo`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, evs := open(t, dir)
	if len(evs) != 2 {
		t.Fatalf("recovered %d events, want a and b", len(evs))
	}
}

// TestRotationKeepsWhatIsOpen: a journal past its size is rewritten with
// its open entries and their last checkpoints only.
func TestRotationKeepsWhatIsOpen(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, dir)
	j.rotateAt = 4 << 10
	start(t, j)
	j.Open(skeleton("kept", 5))
	j.Progress("kept", Checkpoint{Text: []byte("a b c "), Latency: time.Second})
	for i := range 200 {
		id := "done-" + string(rune('a'+i%26)) + strings.Repeat("x", i%7)
		j.Open(skeleton(id, 1))
		j.Close(id)
		if i%20 == 0 {
			// Let the writer take a batch at a time.
			time.Sleep(time.Millisecond)
		}
	}
	if err := j.Shut(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 4<<10+2<<10 {
		t.Errorf("journal of %d bytes: never rewritten", fi.Size())
	}
	_, evs := open(t, dir)
	if len(evs) != 1 || evs[0].RequestID != "kept" || evs[0].Usage.CompletionTokens != 3 {
		t.Fatalf("after rewrites recovered %+v, want kept with its 3 tokens", evs)
	}
}

// TestUnreadableLinesAreSkippedAndSaid: lines that are not the journal's
// (not JSON, an open line with no key or time, one past maxLine) are
// skipped, counted and said in a WARN line; the entries around them come
// back; a line past maxLine is not held whole.
func TestUnreadableLinesAreSkippedAndSaid(t *testing.T) {
	dir := t.TempDir()
	leftOpen(t, dir, "a")
	f, err := os.OpenFile(filepath.Join(dir, FileName), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{
		"\x00\x01garbage\n",
		`{"open":{"request_id":"no-key","timestamp":"2026-11-27T08:00:00Z"}}` + "\n",
		`{"open":{"request_id":"no-time","key_id":"k"}}` + "\n",
		`{"open":{"request_id":"long","key_id":"k","model":"` + strings.Repeat("m", maxLine) + `"}}` + "\n",
		`{}` + "\n",
		"\n   \n",                      // blank lines are not counted
		strings.Repeat("x", maxLine+1), // nor is a torn last line, unless it is too long to be the journal's
	} {
		if _, err := f.WriteString(l); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	var buf strings.Builder
	_, evs, err := Open(dir, Options{Count: words, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].RequestID != "a" {
		t.Fatalf("recovered %+v, want a alone", evs)
	}
	if !strings.Contains(buf.String(), "lines that could not be read were skipped") || !strings.Contains(buf.String(), "lines=6") {
		t.Fatalf("log: %s", buf.String())
	}
}
