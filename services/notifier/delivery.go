package notifier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// UserAgent is sent with every delivery.
const UserAgent = "llmproxy-notifier"

// maxErrorBody is how much of a failed response's body is kept in a dead
// letter's last_error; the rest is discarded.
const maxErrorBody = 512

// attempt is the result of one POST to an endpoint.
type attempt struct {
	// Status is the HTTP status, 0 when no response was read.
	Status int
	// RetryAfter is the receiver's Retry-After, when it sent one.
	RetryAfter    time.Duration
	HasRetryAfter bool
	// Err describes a failure (transport error, timeout or non-2xx).
	Err      error
	Duration time.Duration
}

// class is what an attempt means for the event.
type class int

const (
	classSuccess   class = iota // 2xx: done
	classRetry                  // 408, 429, 5xx, transport error, timeout
	classPermanent              // any other status: retrying will not help
)

// classify maps an attempt's status (0 when there was no response) to what
// happens to the event next.
func classify(status int) class {
	switch {
	case status >= 200 && status < 300:
		return classSuccess
	case status == 0, status == http.StatusRequestTimeout, status == http.StatusTooManyRequests, status >= 500:
		return classRetry
	default:
		return classPermanent
	}
}

// post sends body to ep once. It never returns an error itself: every
// failure is described in the attempt.
func post(ctx context.Context, client *http.Client, ep Endpoint, eventID string, body []byte, now time.Time) attempt {
	ctx, cancel := context.WithTimeout(ctx, ep.Timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return attempt{Err: fmt.Errorf("build request: %w", err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set(EventIDHeader, eventID)
	if ep.Secret != "" {
		req.Header.Set(SignatureHeader, Sign(ep.Secret, now, body))
	}

	start := time.Now()
	resp, err := client.Do(req)
	a := attempt{Duration: time.Since(start)}
	if err != nil {
		a.Err = transportError(err, ep.Timeout)
		return a
	}
	defer resp.Body.Close()
	a.Status = resp.StatusCode
	a.RetryAfter, a.HasRetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)

	if classify(resp.StatusCode) == classSuccess {
		// Drain what is left so the connection is reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return a
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	a.Err = statusError(resp.StatusCode, snippet)
	return a
}

// transportError says what went wrong without the URL, which net/http puts
// in its errors and which may carry credentials.
func transportError(err error, timeout time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("timeout after %s", timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func statusError(status int, body []byte) error {
	msg := fmt.Sprintf("HTTP %d %s", status, http.StatusText(status))
	text := strings.TrimSpace(strings.ToValidUTF8(string(body), string(utf8.RuneError)))
	if text != "" {
		msg += ": " + text
	}
	return errors.New(msg)
}

// eventIDFromBody reads request_id from an event body.
func eventIDFromBody(body []byte) string {
	var e struct {
		RequestID string `json:"request_id"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	return e.RequestID
}
