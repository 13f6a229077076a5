package gateway

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestReadBody: a declared length is read into a buffer of that size, and a
// body that does not match its declared length is read or refused by what
// it really holds.
func TestReadBody(t *testing.T) {
	cases := []struct {
		name     string
		body     string
		size     int64
		limit    int64
		want     string
		wantErr  error
		exactCap bool
	}{
		{name: "declared", body: `{"a":1}`, size: 7, limit: 100, want: `{"a":1}`, exactCap: true},
		{name: "empty", body: ``, size: 0, limit: 100, want: ``, exactCap: true},
		{name: "unknown length", body: `{"a":1}`, size: -1, limit: 100, want: `{"a":1}`},
		{name: "longer than declared", body: `{"a":12345}`, size: 5, limit: 100, want: `{"a":12345}`},
		{name: "longer than declared, past the limit", body: strings.Repeat("x", 50), size: 5, limit: 20, wantErr: errTooLarge},
		{name: "unknown length past the limit", body: strings.Repeat("x", 50), size: -1, limit: 20, wantErr: errTooLarge},
		{name: "shorter than declared", body: `{}`, size: 7, limit: 100, wantErr: io.ErrUnexpectedEOF},
		{name: "declared at the limit", body: strings.Repeat("x", 20), size: 20, limit: 20, want: strings.Repeat("x", 20), exactCap: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := readBody(bytes.NewReader([]byte(c.body)), c.size, c.limit)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Fatalf("body = %q, want %q", got, c.want)
			}
			if c.exactCap && int64(cap(got)) != c.size {
				t.Fatalf("cap = %d, want the declared %d", cap(got), c.size)
			}
		})
	}
}
