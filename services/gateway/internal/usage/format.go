package usage

import "strings"

// Format names the wire format of a backend response body.
type Format int

// The response formats the gateway understands. FormatUnknown responses are
// forwarded without usage extraction.
const (
	FormatUnknown Format = iota
	// FormatOpenAIJSON is a non-streamed OpenAI/vLLM body: chat completions,
	// completions, embeddings and responses.
	FormatOpenAIJSON
	// FormatOpenAISSE is an OpenAI/vLLM text/event-stream of chunks, ending
	// with "data: [DONE]" (chat completions, completions, responses).
	FormatOpenAISSE
	// FormatAnthropicJSON is a non-streamed Anthropic /v1/messages body.
	FormatAnthropicJSON
	// FormatAnthropicSSE is an Anthropic /v1/messages event stream.
	FormatAnthropicSSE
	// FormatOllamaJSON is a non-streamed Ollama body (/api/chat,
	// /api/generate, /api/embed).
	FormatOllamaJSON
	// FormatOllamaNDJSON is an Ollama application/x-ndjson stream.
	FormatOllamaNDJSON
	// FormatTGIJSON is a non-streamed TGI /generate body.
	FormatTGIJSON
	// FormatTGISSE is a TGI /generate_stream event stream.
	FormatTGISSE
)

var formatNames = [...]string{
	FormatUnknown:       "unknown",
	FormatOpenAIJSON:    "openai-json",
	FormatOpenAISSE:     "openai-sse",
	FormatAnthropicJSON: "anthropic-json",
	FormatAnthropicSSE:  "anthropic-sse",
	FormatOllamaJSON:    "ollama-json",
	FormatOllamaNDJSON:  "ollama-ndjson",
	FormatTGIJSON:       "tgi-json",
	FormatTGISSE:        "tgi-sse",
}

// String returns a short lowercase name such as "openai-sse".
func (f Format) String() string {
	if f < 0 || int(f) >= len(formatNames) {
		return "unknown"
	}
	return formatNames[f]
}

// Streaming reports whether f is a stream that must be cut with a Splitter.
func (f Format) Streaming() bool {
	switch f {
	case FormatOpenAISSE, FormatAnthropicSSE, FormatOllamaNDJSON, FormatTGISSE:
		return true
	}
	return false
}

// sse reports whether events of f are Server-Sent Events (data: lines), as
// opposed to bare JSON lines or bodies.
func (f Format) sse() bool {
	return f == FormatOpenAISSE || f == FormatAnthropicSSE || f == FormatTGISSE
}

type family int

const (
	familyNone family = iota
	familyOpenAI
	familyAnthropic
	familyOllama
	familyTGI
)

func (f Format) family() family {
	switch f {
	case FormatOpenAIJSON, FormatOpenAISSE:
		return familyOpenAI
	case FormatAnthropicJSON, FormatAnthropicSSE:
		return familyAnthropic
	case FormatOllamaJSON, FormatOllamaNDJSON:
		return familyOllama
	case FormatTGIJSON, FormatTGISSE:
		return familyTGI
	}
	return familyNone
}

// DetectFormat picks the response format from the request path and the
// response Content-Type. The path decides the engine family (/v1/messages is
// Anthropic, /api/... is Ollama, /generate and /generate_stream are TGI,
// everything else is OpenAI-compatible); the content type decides stream or
// not. When the content type is missing or unrecognised the path's default
// is used: /generate_stream streams, Ollama's chat and generate stream as
// NDJSON (Ollama's default), everything else is a JSON body.
func DetectFormat(path string, contentType string) Format {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	path = strings.TrimRight(path, "/")
	fam := familyOpenAI
	switch {
	case strings.HasSuffix(path, "/v1/messages"):
		fam = familyAnthropic
	case strings.HasPrefix(path, "/api/"):
		fam = familyOllama
	case path == "/generate" || path == "/generate_stream":
		fam = familyTGI
	}

	media := contentType
	if i := strings.IndexByte(media, ';'); i >= 0 {
		media = media[:i]
	}
	media = strings.ToLower(strings.TrimSpace(media))
	var stream, known bool
	switch media {
	case "text/event-stream":
		stream, known = true, true
	case "application/x-ndjson", "application/ndjson", "application/jsonl":
		stream, known = true, true
	case "application/json":
		stream, known = false, true
	}
	if !known {
		switch {
		case fam == familyTGI:
			stream = path == "/generate_stream"
		case fam == familyOllama:
			stream = path == "/api/chat" || path == "/api/generate"
		}
	}

	switch fam {
	case familyAnthropic:
		if stream {
			return FormatAnthropicSSE
		}
		return FormatAnthropicJSON
	case familyOllama:
		if stream {
			return FormatOllamaNDJSON
		}
		return FormatOllamaJSON
	case familyTGI:
		if stream {
			return FormatTGISSE
		}
		return FormatTGIJSON
	}
	if stream {
		return FormatOpenAISSE
	}
	return FormatOpenAIJSON
}
