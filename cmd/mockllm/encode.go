package main

import (
	"encoding/json"
	"math"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Replies are assembled by appending into pooled byte slices rather than
// by encoding structs, so that a streamed token costs one small append and
// one write. Only request bodies go through encoding/json.

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > 1<<20 {
		return
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			// Rare for model names and ids: let encoding/json handle
			// escapes and invalid UTF-8.
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// tokenText is the text of completion token i: "tok<i> ". Replies are the
// concatenation of tokenText(0..n-1), so tests can predict them.
func appendTokenText(b []byte, i int) []byte {
	b = append(b, "tok"...)
	b = strconv.AppendInt(b, int64(i), 10)
	return append(b, ' ')
}

// appendContent appends the whole reply text of n tokens (unquoted; the
// token texts need no JSON escaping).
func appendContent(b []byte, n int) []byte {
	for i := range n {
		b = appendTokenText(b, i)
	}
	return b
}

func appendInt(b []byte, v int) []byte { return strconv.AppendInt(b, int64(v), 10) }

// appendSentNS appends `,"mock_sent_ns":<unix nanos>}`: it closes a JSON
// object with the time the event is being sent.
func appendSentNS(b []byte) []byte {
	b = append(b, `,"mock_sent_ns":`...)
	b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
	return append(b, '}')
}

// appendPromFloat writes v as Python's prometheus_client does (2.0, 0.5),
// which is what vLLM's /metrics shows.
func appendPromFloat(b []byte, v float64) []byte {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		b = strconv.AppendFloat(b, v, 'f', -1, 64)
		return append(b, ".0"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
