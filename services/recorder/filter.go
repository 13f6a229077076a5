package recorder

import (
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// Filter selects requests from the request log. Zero fields select
// everything.
type Filter struct {
	// KeyID is the key's public id.
	KeyID string
	// RequestID selects one request by the gateway's id.
	RequestID string
	// ClientRequestID selects the requests whose client sent this
	// X-Request-Id (the event's client_request_id); clients may reuse one.
	ClientRequestID string
	// Since is the earliest time of a request. When zero it is one hour
	// ago, unless RequestID or ClientRequestID is set: then the whole log
	// is searched.
	Since time.Time
	// Status is the HTTP status code of the reply.
	Status int
	// Limit is the most requests returned, the newest ones (default
	// DefaultLimit).
	Limit int
}

// DefaultLimit is the number of requests a Filter without Limit returns.
const DefaultLimit = 100

// DefaultWindow is how far back a Filter without Since looks.
const DefaultWindow = time.Hour

func (f Filter) withDefaults(now time.Time) Filter {
	if f.Since.IsZero() && f.RequestID == "" && f.ClientRequestID == "" {
		f.Since = now.Add(-DefaultWindow)
	}
	if f.Limit <= 0 {
		f.Limit = DefaultLimit
	}
	return f
}

// match reports whether e passes the filters the stream cannot apply.
func (f Filter) match(e *events.RequestCompleted) bool {
	if f.RequestID != "" && e.RequestID != f.RequestID {
		return false
	}
	if f.ClientRequestID != "" && e.ClientRequestID != f.ClientRequestID {
		return false
	}
	if f.KeyID != "" && e.KeyID != f.KeyID {
		return false
	}
	if f.Status != 0 && e.StatusCode != f.Status {
		return false
	}
	// The stream is read from the time NATS stored the events at or
	// after Since; a request stored then may have arrived before it.
	if !f.Since.IsZero() && e.Timestamp.Before(f.Since) {
		return false
	}
	return true
}
