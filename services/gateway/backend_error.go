package gateway

import (
	"bufio"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"unicode"

	"github.com/llmproxy/llmproxy/services/gateway/internal/apierr"
	"github.com/llmproxy/llmproxy/services/gateway/internal/usage"
)

// backendErrorReply returns the error the gateway answers in place of a
// backend's error reply that a client could not read as one, or nil when
// the reply is relayed as it is:
//   - 401 and 407 (the backend refused the gateway's own credentials,
//     backends[].headers): 502, so that the client does not take its own
//     key for the one refused;
//   - any other status of 400 or more whose body is not JSON (an HTML page
//     of a proxy in front of the engine, a plain-text "404 page not
//     found"): the same status in OpenAI's error shape, with the first
//     line of a plain-text body in the message and the backend's
//     Retry-After kept.
//
// JSON error bodies (vLLM's, TGI's, Ollama's own) and streams are the
// engines' own answers and go through unchanged. label names the backend
// (runtime.backendLabel).
func backendErrorReply(resp *http.Response, label string) *apierr.Error {
	st := resp.StatusCode
	if st < 400 {
		return nil
	}
	ct := resp.Header.Get("Content-Type")
	if usage.IsStreamType(ct) {
		return nil
	}
	answered := label + " answered " + strconv.Itoa(st)
	if t := http.StatusText(st); t != "" {
		answered += " " + t
	}
	if st == http.StatusUnauthorized || st == http.StatusProxyAuthRequired {
		return apierr.BadGateway(answered + ": it refused the gateway's credentials for it (backends[].headers)")
	}
	mt, _, _ := mime.ParseMediaType(ct)
	if mt == "application/json" || strings.HasSuffix(mt, "+json") {
		return nil
	}
	msg := answered
	if mt == "text/plain" && resp.Header.Get("Content-Encoding") == "" {
		if line := firstLine(resp.Body, 200); line != "" {
			msg += ": " + line
		}
	}
	e := &apierr.Error{Status: st, Type: "api_error", Code: "backend_error", Message: msg}
	if st < 500 {
		e.Type = "invalid_request_error"
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		e.Header = http.Header{"Retry-After": {ra}}
	}
	return e
}

// firstLine returns the first non-blank line of r, at most max bytes of it,
// valid UTF-8 with control characters left out.
func firstLine(r io.Reader, max int) string {
	sc := bufio.NewScanner(io.LimitReader(r, 4<<10))
	for sc.Scan() {
		line := strings.TrimSpace(strings.ToValidUTF8(sc.Text(), ""))
		if line == "" {
			continue
		}
		line = strings.Map(func(c rune) rune {
			if unicode.IsControl(c) {
				return -1
			}
			return c
		}, line)
		if len(line) > max {
			line = strings.ToValidUTF8(line[:max], "") + "…"
		}
		return line
	}
	return ""
}
