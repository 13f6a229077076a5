package events

import "strings"

// Stream and subject names. They are part of the public contract: other
// systems subscribe to them directly.
const (
	StreamName    = "LLMPROXY"
	StreamSubject = "llmproxy.v1.>"
	DLQStreamName = "LLMPROXY_DLQ"
	DLQSubject    = "llmproxy.dlq.>"

	// SubjectCompletedPrefix is followed by the key's public id.
	SubjectCompletedPrefix = "llmproxy.v1.request.completed."
	// SubjectCompletedAll matches every RequestCompleted subject.
	SubjectCompletedAll = SubjectCompletedPrefix + "*"

	// AnonymousKeyID is the key id of requests served with auth off.
	AnonymousKeyID = "anonymous"
	// UnauthenticatedKeyID is the key id of requests refused for want of a
	// valid key.
	UnauthenticatedKeyID = "unauthenticated"
)

// Subject returns the subject a RequestCompleted for keyID is published on.
// Characters that NATS gives meaning to are replaced so that a key id can
// never widen or split a subject.
func Subject(keyID string) string {
	if keyID == "" {
		keyID = AnonymousKeyID
	}
	return SubjectCompletedPrefix + sanitizeToken(keyID)
}

// DLQSubjectFor returns the dead-letter subject of one webhook endpoint.
func DLQSubjectFor(endpoint string) string {
	return "llmproxy.dlq." + sanitizeToken(endpoint)
}

func sanitizeToken(s string) string {
	if !strings.ContainsAny(s, ". *>\t\r\n") {
		return s
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', ' ', '*', '>', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}
