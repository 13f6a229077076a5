// Package events is the wire contract between the gateway and every consumer
// of its events: the RequestCompleted v1 body, the subjects it is published on
// and the JetStream streams that hold it.
package events

import (
	"encoding/json"
	"time"
)

// SchemaRequestCompletedV1 is the value of RequestCompleted.Schema for this
// version of the body. Consumers must ignore fields they do not know.
const SchemaRequestCompletedV1 = "llmproxy.request.completed/v1"

// Usage sources.
const (
	// UsageSourceBackend means the counts were read off the backend's reply.
	UsageSourceBackend = "backend"
	// UsageSourceEstimated means the gateway counted tokens itself (the
	// backend sent no usage, or the client left mid-stream).
	UsageSourceEstimated = "estimated"
)

// MaxTokenCount is the largest prompt_tokens, completion_tokens or
// reservation an event carries: 2^31-1, the range of the engines' own
// (32-bit) token counts and far beyond any context served. A count above
// it is no count: the gateway takes a backend's usage beyond it as absent
// and estimates instead, and the meter refuses an event beyond it as
// poison rather than let it into the ledger (Redis scripts compute in
// doubles, exact only to 2^53, and HINCRBY stops at 2^63).
const MaxTokenCount int64 = 1<<31 - 1

// Usage is the token count of one request, in the OpenAI shape. Each count
// is at most MaxTokenCount (total_tokens at most twice that).
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// CapturedResponse is the response content kept in an event when capture is
// on: a non-stream body, or the assembled delta text of a stream, bounded.
type CapturedResponse struct {
	Content   string `json:"content"`
	Truncated bool   `json:"truncated"`
}

// RequestCompleted is published once per request, success or not, on
// Subject(KeyID) with the Nats-Msg-Id header set to RequestID.
//
// The fields from request_id to status_code are the upstream webhook body
// and keep its names and types; api_key is always masked.
type RequestCompleted struct {
	Schema string `json:"schema"`

	RequestID   string          `json:"request_id"`
	UserID      string          `json:"user_id"`
	APIKey      string          `json:"api_key"`
	RequestBody json.RawMessage `json:"request_body"`
	Usage       Usage           `json:"usage"`
	IsStream    bool            `json:"is_stream"`
	Endpoint    string          `json:"endpoint"`
	Timestamp   time.Time       `json:"timestamp"`
	BackendURL  string          `json:"backend_url"`
	LatencyMS   int64           `json:"latency_ms"`
	StatusCode  int             `json:"status_code"`

	KeyID        string `json:"key_id"`
	KeyName      string `json:"key_name"`
	Model        string `json:"model"`
	UsageSource  string `json:"usage_source"`
	TTFTMS       int64  `json:"ttft_ms"`
	FinishReason string `json:"finish_reason"`
	ClientIP     string `json:"client_ip"`
	Error        string `json:"error"`
	// Reservation is the number of tokens the gateway reserved at admission
	// for this request; the meter releases it when it applies the event.
	Reservation int64 `json:"reservation"`
	// QuotaPeriod is the key's quota_reset_period at the time of the request
	// (daily, weekly, monthly or never).
	QuotaPeriod string `json:"quota_period,omitempty"`
	// ClientRequestID is the X-Request-Id the client sent, if any. The
	// gateway never uses it as RequestID: a client could reuse it.
	ClientRequestID string `json:"client_request_id,omitempty"`

	Tags     map[string]string `json:"tags,omitempty"`
	Response *CapturedResponse `json:"response,omitempty"`

	// Truncated reports that the event was too large to publish whole (over
	// the NATS server's max_payload): its largest content was cut to fit —
	// RequestBody replaced by null, Response.Content shortened (with
	// Response.Truncated set). Usage, ids, status and every other field
	// are exact.
	Truncated bool `json:"truncated,omitempty"`
}

// Marshal encodes e, filling in the schema name when it is empty and the
// request body with null when it is nil. The bytes are those json.Marshal(e)
// gives; see AppendJSON.
func (e *RequestCompleted) Marshal() ([]byte, error) {
	return e.AppendMarshal(nil)
}

// AppendMarshal is Marshal appending to dst, which it grows once, to fit e
// when no string needs escaping. On error dst is returned unextended.
func (e *RequestCompleted) AppendMarshal(dst []byte) ([]byte, error) {
	if e.Schema == "" {
		e.Schema = SchemaRequestCompletedV1
	}
	if e.RequestBody == nil {
		e.RequestBody = json.RawMessage("null")
	}
	if n := e.encodedSizeHint(); cap(dst)-len(dst) < n {
		dst = append(make([]byte, 0, len(dst)+n), dst...)
	}
	return e.AppendJSON(dst)
}

// Unmarshal decodes one RequestCompleted body.
func Unmarshal(data []byte) (RequestCompleted, error) {
	var e RequestCompleted
	err := json.Unmarshal(data, &e)
	return e, err
}
