package usage

import (
	"bytes"
	"strings"
)

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
	return SniffFormat(path, contentType, nil)
}

// SniffFormat is DetectFormat for a reply whose body begins with first:
// when the content type is missing or unrecognised and first opens a
// Server-Sent Event (a "data:", "event:", "id:" or "retry:" field, or a
// ":" comment), the reply is the path's event stream, whatever the path's
// default. An engine that streams without a Content-Type is relayed as a
// stream, event by event, and its usage read.
func SniffFormat(path string, contentType string, first []byte) Format {
	path = cleanPath(path)
	fam := familyOf(path)
	stream, known := streamMedia(contentType)
	if !known {
		switch {
		case fam != familyOllama && opensSSE(first):
			stream = true
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

// cleanPath is path without its query and trailing slashes.
func cleanPath(path string) string {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	return strings.TrimRight(path, "/")
}

// streamMedia reports whether the content type ct names a stream, and
// whether it is a type the gateway knows (known false: missing or other).
func streamMedia(ct string) (stream, known bool) {
	switch media := mediaType(ct); {
	case media == "text/event-stream", media == "application/jsonl", strings.Contains(media, "ndjson"):
		return true, true
	case media == "application/json":
		return false, true
	}
	return false, false
}

// familyOf is the API family of a request path (no query, no trailing
// slash).
func familyOf(path string) family {
	switch {
	case strings.HasSuffix(path, "/v1/messages"):
		return familyAnthropic
	case strings.HasPrefix(path, "/api/"):
		return familyOllama
	case path == "/generate" || path == "/generate_stream":
		return familyTGI
	}
	return familyOpenAI
}

// opensSSE reports whether b, the first bytes of a body, begin a
// Server-Sent Event: a UTF-8 byte order mark and blank lines may come first.
func opensSSE(b []byte) bool {
	b = bytes.TrimLeft(bytes.TrimPrefix(b, bom), "\r\n")
	if len(b) > 0 && b[0] == ':' {
		return true
	}
	for _, f := range sseFieldNames {
		if bytes.HasPrefix(b, f) {
			return true
		}
	}
	return false
}

var bom = []byte("\xef\xbb\xbf")

// SniffNeedsMore reports whether SniffFormat cannot yet tell from first,
// the body's first bytes so far, whether a reply to path with content type
// contentType is an event stream: the type is missing or unknown and first
// could still open one (it is empty, blank lines, part of a byte order
// mark, or part of a field's name, "da" say). The caller reads on.
func SniffNeedsMore(path, contentType string, first []byte) bool {
	if _, known := streamMedia(contentType); known || familyOf(cleanPath(path)) == familyOllama {
		return false
	}
	if len(first) < len(bom) && bytes.HasPrefix(bom, first) {
		return true
	}
	b := bytes.TrimLeft(bytes.TrimPrefix(first, bom), "\r\n")
	if len(b) == 0 {
		return true
	}
	for _, f := range sseFieldNames {
		if len(b) < len(f) && bytes.HasPrefix(f, b) {
			return true
		}
	}
	return false
}

var sseFieldNames = [][]byte{[]byte("data:"), []byte("event:"), []byte("id:"), []byte("retry:")}

// IsStreamType reports whether the content type ct names a stream: Server-
// Sent Events or NDJSON (JSON lines), in any case.
func IsStreamType(ct string) bool {
	stream, _ := streamMedia(ct)
	return stream
}

// mediaType is ct's media type, lower case, without parameters.
func mediaType(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.ToLower(strings.TrimSpace(ct))
}
