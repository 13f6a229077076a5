package main

import "net/http"

// family is the API dialect of an endpoint; errors are written in the
// dialect's own shape.
type family int

const (
	famOpenAI family = iota
	famTGI
	famOllama
	famAnthropic
)

// writeError writes an error body as the engine behind fam does:
//
//	OpenAI/vLLM: {"error":{"message":..,"type":"BadRequestError","param":null,"code":400}}
//	TGI:         {"error":..,"error_type":"validation"}
//	Ollama:      {"error":..}
//	Anthropic:   {"type":"error","error":{"type":"invalid_request_error","message":..}}
func writeError(w http.ResponseWriter, fam family, status int, msg string) {
	bp := getBuf()
	defer putBuf(bp)
	b := *bp
	switch fam {
	case famTGI:
		b = append(b, `{"error":`...)
		b = appendJSONString(b, msg)
		b = append(b, `,"error_type":`...)
		b = appendJSONString(b, tgiErrorType(status))
		b = append(b, '}')
	case famOllama:
		b = append(b, `{"error":`...)
		b = appendJSONString(b, msg)
		b = append(b, '}')
	case famAnthropic:
		b = append(b, `{"type":"error","error":{"type":`...)
		b = appendJSONString(b, anthropicErrorType(status))
		b = append(b, `,"message":`...)
		b = appendJSONString(b, msg)
		b = append(b, `}}`...)
	default:
		b = append(b, `{"error":{"message":`...)
		b = appendJSONString(b, msg)
		b = append(b, `,"type":`...)
		b = appendJSONString(b, openaiErrorType(status))
		b = append(b, `,"param":null,"code":`...)
		b = appendInt(b, status)
		b = append(b, `}}`...)
	}
	*bp = b
	writeJSON(w, status, b)
}

// openaiErrorType follows vLLM, which names the error after the status.
func openaiErrorType(status int) string {
	switch status {
	case 400:
		return "BadRequestError"
	case 401:
		return "AuthenticationError"
	case 403:
		return "PermissionDeniedError"
	case 404:
		return "NotFoundError"
	case 429:
		return "RateLimitError"
	case 503:
		return "ServiceUnavailableError"
	}
	if status >= 500 {
		return "InternalServerError"
	}
	return "BadRequestError"
}

func tgiErrorType(status int) string {
	switch {
	case status == 429:
		return "overloaded"
	case status < 500:
		return "validation"
	}
	return "generation"
}

func anthropicErrorType(status int) string {
	switch status {
	case 401:
		return "authentication_error"
	case 403:
		return "permission_error"
	case 404:
		return "not_found_error"
	case 413:
		return "request_too_large"
	case 429:
		return "rate_limit_error"
	case 529:
		return "overloaded_error"
	}
	if status >= 500 {
		return "api_error"
	}
	return "invalid_request_error"
}
