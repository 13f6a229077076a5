package main

import (
	"testing"
	"time"
)

func TestSentStamp(t *testing.T) {
	tests := []struct {
		name string
		line string
		want int64
		ok   bool
	}{
		{"openai chunk", `data: {"id":"x","choices":[],"mock_sent_ns":1764100000123456789}` + "\n", 1764100000123456789, true},
		{"tgi no space", `data:{"token":{"id":1},"mock_sent_ns":42}` + "\n", 42, true},
		{"space after colon", `{"done":false,"mock_sent_ns": 7}` + "\n", 7, true},
		{"done marker", "data: [DONE]\n", 0, false},
		{"event line", "event: message_start\n", 0, false},
		{"empty stamp", `{"mock_sent_ns":}`, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := sentStamp([]byte(tt.line))
			if got != tt.want || ok != tt.ok {
				t.Fatalf("sentStamp(%q) = %d, %v; want %d, %v", tt.line, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestSummarise(t *testing.T) {
	var ns []int64
	for i := 1; i <= 100; i++ {
		ns = append(ns, int64(i)*int64(time.Microsecond))
	}
	d := summarise(ns)
	if d.N != 100 || d.P50 != 50 || d.P99 != 99 || d.Max != 100 || d.Mean != 50.5 {
		t.Fatalf("summarise = %+v", d)
	}
	if (summarise(nil) != Dist{}) {
		t.Fatal("summarise(nil) is not zero")
	}
}
