package events

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sampleEvent is a typical event as the gateway publishes it.
func sampleEvent() *RequestCompleted {
	return &RequestCompleted{
		Schema:          SchemaRequestCompletedV1,
		RequestID:       "0f3c1a7e-2b5d-4c8e-9a61-5d2f7b3e8c40",
		UserID:          "user-42",
		APIKey:          "sk-****abcd",
		RequestBody:     json.RawMessage(`{"model":"Qwen/Qwen2.5-7B-Instruct","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about load balancers, please."}],"stream":true,"max_tokens":256}`),
		Usage:           Usage{PromptTokens: 31, CompletionTokens: 17, TotalTokens: 48},
		IsStream:        true,
		Endpoint:        "/v1/chat/completions",
		Timestamp:       time.Date(2025, 11, 25, 16, 33, 20, 123456789, time.UTC),
		BackendURL:      "http://10.0.3.17:8000",
		LatencyMS:       812,
		StatusCode:      200,
		KeyID:           "key_7Hq2",
		KeyName:         "team-search prod",
		Model:           "Qwen/Qwen2.5-7B-Instruct",
		UsageSource:     UsageSourceBackend,
		TTFTMS:          95,
		FinishReason:    "stop",
		ClientIP:        "203.0.113.9",
		Reservation:     4352,
		QuotaPeriod:     "monthly",
		ClientRequestID: "client-abc",
		Tags:            map[string]string{"team": "search", "env": "prod"},
	}
}

// checkSameAsEncodingJSON fails t unless ev.AppendJSON gives the bytes and
// the error json.Marshal(ev) gives.
func checkSameAsEncodingJSON(t *testing.T, name string, ev *RequestCompleted) {
	t.Helper()
	want, wantErr := json.Marshal(ev)
	prefix := []byte("prefix")
	got, gotErr := ev.AppendJSON(prefix)
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("%s: AppendJSON error %v, json.Marshal error %v", name, gotErr, wantErr)
	}
	if wantErr != nil {
		if gotErr.Error() != wantErr.Error() {
			t.Errorf("%s: AppendJSON error %q, json.Marshal error %q", name, gotErr, wantErr)
		}
		if string(got) != "prefix" {
			t.Errorf("%s: AppendJSON extended dst on error: %q", name, got)
		}
		return
	}
	if !bytes.HasPrefix(got, prefix) {
		t.Fatalf("%s: AppendJSON lost dst: %q", name, got)
	}
	if got = got[len(prefix):]; !bytes.Equal(got, want) {
		t.Errorf("%s:\n AppendJSON   %s\n json.Marshal %s", name, got, want)
	}
}

func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	strs := map[string]string{
		"empty":          "",
		"ascii":          "hello world",
		"unicode":        "héllo wörld 日本語 🎉",
		"html":           `<script>alert("x&y")</script>`,
		"quotes":         `a "quoted" \ back\slash /slash`,
		"controls":       "\x00\x01\b\f\n\r\t\x1f\x7f end",
		"separators":     "line\u2028para\u2029end",
		"invalid utf-8":  "a\xffb\xc3\x28c\xe2\x80d\xed\xa0\x80e",
		"truncated rune": "ab\xe2\x80",
		"replacement":    "\ufffd",
	}
	times := map[string]time.Time{
		"zero":         {},
		"utc nanos":    time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		"offset":       time.Date(2025, 1, 2, 3, 4, 5, 600000000, time.FixedZone("CET", 3600)),
		"neg offset":   time.Date(1999, 12, 31, 23, 59, 59, 0, time.FixedZone("", -(9*3600+30*60))),
		"odd offset":   time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("", 5*3600+45*60+30)),
		"year 0":       time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		"year 9999":    time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		"local":        time.Unix(1732550000, 5).Local(),
		"monotonic":    time.Now(),
		"year 10000":   time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		"year -1":      time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		"zone 24h":     time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600)),
		"zone -100h":   time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("", -100*3600)),
		"zone 23h59":   time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("", 23*3600+59*60)),
		"year 10000 Z": time.Date(10000, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600)),
	}
	bodies := map[string]json.RawMessage{
		"nil":                nil,
		"null":               json.RawMessage(`null`),
		"empty":              json.RawMessage{},
		"number":             json.RawMessage(`-1.5e10`),
		"string":             json.RawMessage(`"x"`),
		"nested":             json.RawMessage(`{"a":[1,{"b":[true,false,null]},"c"],"d":{}}`),
		"spaces in strings":  json.RawMessage(`{"content":"hello there\tfriend \u003c"}`),
		"whitespace":         json.RawMessage(" {\n\t\"a\" : [ 1 , 2 ] ,\r\n \"b\":\"x y\" } "),
		"html":               json.RawMessage(`{"content":"<b>a & b</b>"}`),
		"separators":         json.RawMessage("{\"content\":\"a\u2028b\u2029c\"}"),
		"escaped quote":      json.RawMessage(`{"a":"x\" <","b":1}`),
		"escaped backslash":  json.RawMessage(`{"a":"x\\"," b":1}`),
		"invalid utf-8":      json.RawMessage("{\"a\":\"\xff\xfe\"}"),
		"trailing garbage":   json.RawMessage(`{"a":1}x`),
		"unterminated":       json.RawMessage(`{"a":`),
		"bad escape":         json.RawMessage(`"\x"`),
		"bare html":          json.RawMessage(`<a>`),
		"deep":               json.RawMessage(strings.Repeat("[", 200) + strings.Repeat("]", 200)),
		"too deep":           json.RawMessage(strings.Repeat("[", 10001) + strings.Repeat("]", 10001)),
		"whitespace + error": json.RawMessage(`{"a": 1,}`),
	}
	ints := []int64{0, 1, -1, 42, math.MaxInt64, math.MinInt64, math.MaxInt32 + 1, -1 << 53}
	tags := map[string]map[string]string{
		"nil":   nil,
		"empty": {},
		"one":   {"team": "search"},
		"many":  {"z": "1", "a": "2", "A": "3", "é": "4", "": "5", "aa": "6", "<k>": "<v>", "a\xff": "\u2028"},
		"large": largeTags(40),
	}
	responses := map[string]*CapturedResponse{
		"nil":       nil,
		"empty":     {},
		"truncated": {Content: "partial <answer> & more\n", Truncated: true},
	}

	check := func(name string, mutate func(e *RequestCompleted)) {
		t.Helper()
		for _, base := range []*RequestCompleted{{}, sampleEvent()} {
			ev := *base
			mutate(&ev)
			checkSameAsEncodingJSON(t, name, &ev)
		}
	}
	check("zero value", func(*RequestCompleted) {})
	for n, s := range strs {
		check("string "+n, func(e *RequestCompleted) {
			e.Schema, e.RequestID, e.UserID, e.APIKey, e.Endpoint, e.BackendURL = s, s, s, s, s, s
			e.KeyID, e.KeyName, e.Model, e.UsageSource, e.FinishReason, e.ClientIP = s, s, s, s, s, s
			e.Error, e.QuotaPeriod, e.ClientRequestID = s, s, s
			e.Tags = map[string]string{s: s, "k": s}
			e.Response = &CapturedResponse{Content: s}
		})
	}
	for _, c := range []rune{0, 0x7f, 0x80, 0x7ff, 0x800, 0x2027, 0x2028, 0x2029, 0x202a, 0xfffd, 0xffff, 0x10000, 0x10ffff} {
		check("rune "+strconv.QuoteRune(c), func(e *RequestCompleted) { e.Error = "x" + string(c) + "y" })
	}
	for b := 0; b < 256; b++ {
		check("byte "+strconv.Itoa(b), func(e *RequestCompleted) { e.Error = "x" + string([]byte{byte(b)}) + "y" })
	}
	for n, ts := range times {
		check("time "+n, func(e *RequestCompleted) { e.Timestamp = ts })
	}
	for n, body := range bodies {
		check("body "+n, func(e *RequestCompleted) { e.RequestBody = body })
	}
	for _, i := range ints {
		check("int "+strconv.FormatInt(i, 10), func(e *RequestCompleted) {
			e.Usage = Usage{i, i, i}
			e.LatencyMS, e.StatusCode, e.TTFTMS, e.Reservation = i, int(i), i, i
		})
	}
	for n, m := range tags {
		check("tags "+n, func(e *RequestCompleted) { e.Tags = m })
	}
	for n, r := range responses {
		check("response "+n, func(e *RequestCompleted) { e.Response = r })
	}
	check("bools", func(e *RequestCompleted) {
		e.IsStream = !e.IsStream
		e.Response = &CapturedResponse{Truncated: true}
		e.Truncated = true
	})
}

func largeTags(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m["tag"+strconv.Itoa(n-i)] = strconv.Itoa(i)
	}
	return m
}

func TestMarshalFillsDefaults(t *testing.T) {
	ev := sampleEvent()
	ev.Schema, ev.RequestBody = "", nil
	got, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if ev.Schema != SchemaRequestCompletedV1 || string(ev.RequestBody) != "null" {
		t.Fatalf("Marshal left schema %q, body %q", ev.Schema, ev.RequestBody)
	}
	want, _ := json.Marshal(ev)
	if !bytes.Equal(got, want) {
		t.Fatalf("Marshal:\n got  %s\n want %s", got, want)
	}
}

func TestAppendJSONAllocations(t *testing.T) {
	ev := sampleEvent()
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() { buf, _ = ev.AppendJSON(buf[:0]) }); n != 0 {
		t.Errorf("AppendJSON with room in dst: %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = ev.Marshal() }); n != 1 {
		t.Errorf("Marshal: %v allocations, want 1", n)
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("r1", "<b>&</b>", "héllo\u2028", "a\xffb", []byte(`{"a": [1, 2]}`), int64(42), int64(1732550000), int64(123456789), 3600, true)
	f.Add("", "", "", "", []byte(nil), int64(0), int64(0), int64(0), 0, false)
	f.Add("\x00\n\t\"\\", "key", "tag", "", []byte(`{"content":"x<y"}`), int64(-1), int64(-62135596801), int64(0), -24*3600, true)
	f.Add("x", "", "k", "v", []byte(`{"a":1,}`), int64(math.MaxInt64), int64(253402300800), int64(1), 86399, false)
	f.Add("y", "z", "", "", []byte("\"a\u2029b\""), int64(math.MinInt64), int64(-1), int64(999999999), -5*3600-1800, true)
	f.Fuzz(func(t *testing.T, s1, s2, key, val string, body []byte, n, sec, nsec int64, offset int, flag bool) {
		ev := &RequestCompleted{
			Schema:          s1,
			RequestID:       s2,
			UserID:          key,
			APIKey:          val,
			RequestBody:     body,
			Usage:           Usage{n, -n, n ^ sec},
			IsStream:        flag,
			Endpoint:        s1 + s2,
			Timestamp:       time.Unix(sec, nsec).In(time.FixedZone("", offset)),
			BackendURL:      s2,
			LatencyMS:       sec,
			StatusCode:      int(n),
			KeyID:           key,
			KeyName:         val,
			Model:           s1,
			UsageSource:     s2,
			TTFTMS:          nsec,
			FinishReason:    key + val,
			ClientIP:        s1,
			Error:           s2,
			Reservation:     -n,
			QuotaPeriod:     key,
			ClientRequestID: val,
		}
		if flag {
			ev.Tags = map[string]string{key: val, s1: s2, val: key}
			ev.Response = &CapturedResponse{Content: s1 + val, Truncated: n%2 == 0}
			ev.Truncated = n%3 == 0
		}
		checkSameAsEncodingJSON(t, "fuzz", ev)
	})
}

// BenchmarkMarshal compares Marshal and AppendJSON with encoding/json on a
// typical event.
func BenchmarkMarshal(b *testing.B) {
	ev := sampleEvent()
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ev.Marshal(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = ev.AppendJSON(buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
