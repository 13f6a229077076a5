package notifier

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSignKnownValue(t *testing.T) {
	// HMAC-SHA256("secret", "1700000000.{}"), computed independently.
	got := Sign("secret", time.Unix(1700000000, 0), []byte("{}"))
	want := "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
	if got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
}

func TestVerify(t *testing.T) {
	now := time.Unix(1700000000, 0)
	body := []byte(`{"request_id":"req_1"}`)
	good := Sign("s3cret", now, body)
	rotated := good + ",v1=" + strings.Repeat("ab", 32)
	tests := []struct {
		name      string
		secret    string
		header    string
		body      []byte
		tolerance time.Duration
		at        time.Time
		want      error
	}{
		{"valid", "s3cret", good, body, 5 * time.Minute, now, nil},
		{"valid among several v1", "s3cret", "v1=" + strings.Repeat("00", 32) + "," + good, body, 0, now, nil},
		{"extra v1 ignored", "s3cret", rotated, body, 0, now, nil},
		{"tampered body", "s3cret", good, []byte(`{"request_id":"req_2"}`), 0, now, ErrSignatureMismatch},
		{"wrong secret", "other", good, body, 0, now, ErrSignatureMismatch},
		{"too old", "s3cret", good, body, time.Minute, now.Add(2 * time.Minute), ErrSignatureExpired},
		{"from the future", "s3cret", good, body, time.Minute, now.Add(-2 * time.Minute), ErrSignatureExpired},
		{"no tolerance check", "s3cret", good, body, 0, now.Add(24 * time.Hour), nil},
		{"empty header", "s3cret", "", body, 0, now, ErrSignatureMalformed},
		{"no v1", "s3cret", "t=1700000000", body, 0, now, ErrSignatureMalformed},
		{"no t", "s3cret", "v1=" + strings.Repeat("ab", 32), body, 0, now, ErrSignatureMalformed},
		{"bad hex", "s3cret", "t=1700000000,v1=zz", body, 0, now, ErrSignatureMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verifyAt(tt.secret, tt.header, tt.body, tt.tolerance, tt.at)
			if !errors.Is(err, tt.want) {
				t.Errorf("verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	f.Add("t=1700000000,v1=00", []byte("{}"))
	f.Add(Sign("k", time.Unix(1, 0), []byte("x")), []byte("x"))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		_ = verifyAt("k", header, body, time.Minute, time.Unix(1, 0))
	})
}
