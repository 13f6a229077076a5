package events

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

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

// maxToken bounds a subject token: NATS refuses a protocol line over 4 KiB
// and closes the connection that sent it, so a token past the bound keeps
// its start and a hash of the whole, never the whole.
const maxToken = 128

func sanitizeToken(s string) string {
	if len(s) > maxToken {
		sum := sha256.Sum256([]byte(s))
		s = s[:maxToken-17] + "-" + hex.EncodeToString(sum[:8])
	}
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
