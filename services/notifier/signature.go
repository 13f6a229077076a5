package notifier

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Signature errors returned by Verify.
var (
	// ErrSignatureMalformed means the header is not "t=<unix>,v1=<hex>".
	ErrSignatureMalformed = errors.New("malformed webhook signature header")
	// ErrSignatureMismatch means no v1 value matches the body and secret.
	ErrSignatureMismatch = errors.New("webhook signature does not match")
	// ErrSignatureExpired means the timestamp is outside the tolerance.
	ErrSignatureExpired = errors.New("webhook signature timestamp outside tolerance")
)

// SignatureHeader is the header that carries the signature of a delivery.
const SignatureHeader = "X-LLMProxy-Signature"

// EventIDHeader is the header that carries the event's request id; receivers
// dedupe on it because delivery is at least once.
const EventIDHeader = "X-LLMProxy-Event-Id"

// Sign returns the X-LLMProxy-Signature value for body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>".
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

// Verify checks an X-LLMProxy-Signature header against body and secret. A
// header may carry several v1 values (secret rotation); one match is enough.
// When tolerance is positive the timestamp must be within tolerance of the
// local clock, which bounds replays of a captured request.
func Verify(secret, header string, body []byte, tolerance time.Duration) error {
	return verifyAt(secret, header, body, tolerance, time.Now())
}

func verifyAt(secret, header string, body []byte, tolerance time.Duration, now time.Time) error {
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrSignatureMalformed
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			sig, err := hex.DecodeString(v)
			if err != nil {
				return ErrSignatureMalformed
			}
			sigs = append(sigs, sig)
		}
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrSignatureMalformed
	}
	if tolerance > 0 {
		if d := now.Sub(time.Unix(unix, 0)); d > tolerance || d < -tolerance {
			return ErrSignatureExpired
		}
	}
	want := mac(secret, ts, body)
	for _, sig := range sigs {
		if hmac.Equal(sig, want) {
			return nil
		}
	}
	return ErrSignatureMismatch
}

func mac(secret, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}
