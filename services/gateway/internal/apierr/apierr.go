// Package apierr is the one place where gateway failures become HTTP
// statuses and OpenAI-shaped error bodies:
//
//	{"error":{"message":"...","type":"...","code":"..."}}
//
// or, for Anthropic's Messages API, the same fields in its envelope:
//
//	{"type":"error","error":{"message":"...","type":"authentication_error","code":"..."}}
package apierr

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Error is a failure the client is told about. Message must be safe to show:
// it never carries a secret or an upstream's internals.
type Error struct {
	Status  int
	Type    string
	Code    string
	Message string
	// RetryAfter, when positive, is sent as the Retry-After header (seconds).
	RetryAfter int
	// Header holds extra response headers (e.g. x-ratelimit-*).
	Header http.Header
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Constructors for the classes of failure the gateway knows.
func BadRequest(code, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: code, Message: msg}
}

// BodyTimeout is the answer to a request whose body stopped coming.
func BodyTimeout(after time.Duration) *Error {
	return &Error{Status: http.StatusRequestTimeout, Type: "invalid_request_error", Code: "request_timeout",
		Message: "the request body stopped coming: no byte for " + after.String()}
}

// ClientClosed records a request whose client left before it was
// answered (nginx's 499); nobody reads the body written with it.
func ClientClosed() *Error {
	return &Error{Status: 499, Type: "invalid_request_error", Code: "client_closed_request", Message: "the client closed the request"}
}

func Unauthorized(msg string) *Error {
	return &Error{Status: http.StatusUnauthorized, Type: "invalid_request_error", Code: "invalid_api_key", Message: msg}
}

func Forbidden(code, msg string) *Error {
	return &Error{Status: http.StatusForbidden, Type: "permission_error", Code: code, Message: msg}
}

func NotFound(code, msg string) *Error {
	return &Error{Status: http.StatusNotFound, Type: "invalid_request_error", Code: code, Message: msg}
}

func TooLarge(limit int64) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: "request_too_large",
		Message: "request body exceeds the limit of " + strconv.FormatInt(limit, 10) + " bytes"}
}

// UnsupportedEncoding is the answer to a request body sent compressed
// (Content-Encoding other than identity), which the gateway does not read:
// RFC 7694's 415 with the Accept-Encoding it takes.
func UnsupportedEncoding() *Error {
	return &Error{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Code: "unsupported_content_encoding",
		Message: "compressed request bodies are not accepted: send the body without Content-Encoding",
		Header:  http.Header{"Accept-Encoding": []string{"identity"}}}
}

func RateLimited(code, msg string, retryAfter int) *Error {
	return &Error{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: code, Message: msg, RetryAfter: retryAfter}
}

// QuotaExceeded is the 429 of a key whose period quota is used up.
// Retry-After says when the period resets, which may be hours or days
// away; X-Should-Retry: false tells the OpenAI and Anthropic SDKs, which
// would otherwise sleep that long before their next try, to raise the
// error at once.
func QuotaExceeded(msg string, retryAfter int) *Error {
	return &Error{Status: http.StatusTooManyRequests, Type: "insufficient_quota", Code: "insufficient_quota", Message: msg, RetryAfter: retryAfter,
		Header: http.Header{"X-Should-Retry": []string{"false"}}}
}

func BadGateway(msg string) *Error {
	return &Error{Status: http.StatusBadGateway, Type: "api_error", Code: "backend_error", Message: msg}
}

// Unavailable is a 503 for something the gateway needs that is down for
// now (every backend, the key store, the rate limiter): it carries
// Retry-After: 1, so that a client's SDK waits a moment before it tries
// again rather than choosing its own backoff or none.
func Unavailable(code, msg string) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: "api_error", Code: code, Message: msg, RetryAfter: 1}
}

func GatewayTimeout(msg string) *Error {
	return &Error{Status: http.StatusGatewayTimeout, Type: "api_error", Code: "backend_timeout", Message: msg}
}

func Internal(code, msg string) *Error {
	return &Error{Status: http.StatusInternalServerError, Type: "api_error", Code: code, Message: msg}
}

// Shape is the envelope of an error body.
type Shape int

const (
	// OpenAI is {"error":{"message","type","code"}}.
	OpenAI Shape = iota
	// Anthropic is the Messages API's {"type":"error","error":{"type",
	// "message"}}, its error.type one of Anthropic's for the status, and
	// code kept beside them: OpenAI's three fields are all there too.
	Anthropic
	// Ollama is Ollama's {"error":"message"}, which its clients show
	// (ollama-js, Open WebUI), with code and type kept beside it.
	Ollama
)

// Write sends e to the client in OpenAI's shape.
func Write(w http.ResponseWriter, e *Error) { WriteShaped(w, e, OpenAI) }

// WriteShaped sends e to the client in shape.
func WriteShaped(w http.ResponseWriter, e *Error, shape Shape) {
	h := w.Header()
	for k, v := range e.Header {
		h[k] = v
	}
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(e.Status)
	_, _ = w.Write(BodyShaped(e, shape))
}

// Body returns e's JSON body in OpenAI's shape.
func Body(e *Error) []byte { return BodyShaped(e, OpenAI) }

// BodyShaped returns e's JSON body in shape.
func BodyShaped(e *Error, shape Shape) []byte {
	if shape == Ollama {
		b, _ := json.Marshal(ollamaWire{Error: e.Message, Type: e.Type, Code: e.Code})
		return append(b, '\n')
	}
	v := wire{Error: wireError{Message: e.Message, Type: e.Type, Code: e.Code}}
	if shape == Anthropic {
		v.Type, v.Error.Type = "error", anthropicType(e.Status)
	}
	b, _ := json.Marshal(v)
	return append(b, '\n')
}

// anthropicType is the error.type Anthropic's API gives a status, which
// its SDKs and clients (Claude Code) read to decide whether to retry.
func anthropicType(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusRequestTimeout, http.StatusUnsupportedMediaType, 499:
		return "invalid_request_error"
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable:
		return "overloaded_error"
	case http.StatusGatewayTimeout:
		return "timeout_error"
	}
	return "api_error"
}

type ollamaWire struct {
	Error string `json:"error"`
	Type  string `json:"type"`
	Code  string `json:"code"`
}

type wire struct {
	Type  string    `json:"type,omitempty"`
	Error wireError `json:"error"`
}

type wireError struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    string `json:"code"`
}
