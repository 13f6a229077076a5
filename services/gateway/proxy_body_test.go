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

// TestReadBodyGrowsWithTheBytes: a client that declares a large body and
// sends a little of it holds little memory; the buffer is not made at the
// declared size before the bytes come.
func TestReadBodyGrowsWithTheBytes(t *testing.T) {
	const declared = 8 << 20
	r := &trickle{left: 100}
	if _, err := readBody(r, declared, 10<<20); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v", err)
	}
	if r.biggest > bodyUpfront {
		t.Fatalf("a read into %d bytes after %d sent of %d declared", r.biggest, 100, declared)
	}
	// Sent in full, the body is whole, in a buffer of its own size.
	body := bytes.Repeat([]byte("x"), declared)
	got, err := readBody(bytes.NewReader(body), declared, 10<<20)
	if err != nil || !bytes.Equal(got, body) || cap(got) != declared {
		t.Fatalf("err %v, %d bytes, cap %d", err, len(got), cap(got))
	}
}

// trickle gives left bytes in reads of at most 10, then EOF, and records
// the largest buffer it was asked to fill.
type trickle struct{ left, biggest int }

func (r *trickle) Read(p []byte) (int, error) {
	r.biggest = max(r.biggest, len(p))
	if r.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), r.left, 10)
	r.left -= n
	return n, nil
}
