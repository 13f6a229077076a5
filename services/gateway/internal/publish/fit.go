package publish

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/nats-io/nats.go/jetstream"
)

// dlqRoom is what an event leaves free under the server's max_payload
// besides its headers: the notifier stores an event it cannot deliver
// whole inside a dead letter (endpoint, reason, last error…), which must
// fit on the same server.
const dlqRoom = 8 << 10

// msgIDHeaderSize is the size of the header block of an event's message
// but for its Nats-Msg-Id's value: that header, empty, and the stream it
// expects.
const msgIDHeaderSize = len("NATS/1.0\r\n" + jetstream.MsgIDHeader + ": \r\n" +
	jetstream.ExpectedStreamHeader + ": " + events.StreamName + "\r\n\r\n")

// errEventTooLarge reports an event that does not fit even with its content
// cut.
var errEventTooLarge = errors.New("event too large even without its request body and response")

// maxEventBytes returns the largest event the sender publishes whole as a
// message with Nats-Msg-Id msgID to a server that takes maxPayload bytes
// (headers included) per message. It returns 0, no bound, when maxPayload
// is not known (the connection has not reached a server yet).
func maxEventBytes(maxPayload int64, msgID string) int64 {
	if maxPayload <= 0 {
		return 0
	}
	return max(maxPayload-int64(msgIDHeaderSize+len(msgID))-min(dlqRoom, maxPayload/8), 1)
}

// fitEvent returns the encoded RequestCompleted data cut to at most limit
// bytes and marked truncated: the larger of the request body and the
// captured response goes first (the body becomes null, the response's
// content is shortened), until the event fits. Every other field is kept.
// It fails when data does not decode or the event does not fit even with
// both gone.
func fitEvent(data []byte, limit int) ([]byte, error) {
	ev, err := events.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	ev.Truncated = true
	for cuts := 0; ; {
		out, err := ev.Marshal()
		if err != nil {
			return nil, fmt.Errorf("encode event: %w", err)
		}
		excess := len(out) - limit
		if excess <= 0 {
			return out, nil
		}
		body := len(ev.RequestBody)
		if string(ev.RequestBody) == "null" {
			body = 0
		}
		content := 0
		if ev.Response != nil {
			content = len(ev.Response.Content)
		}
		switch {
		case body == 0 && content == 0:
			return nil, fmt.Errorf("%w (%d bytes, at most %d)", errEventTooLarge, len(out), limit)
		case body >= content:
			ev.RequestBody = json.RawMessage("null")
		default:
			ev.Response.Content = cutUTF8(ev.Response.Content, contentKeep(ev.Response.Content, excess, cuts))
			ev.Response.Truncated = true
			cuts++
		}
	}
}

// contentKeep returns how many bytes of content to keep so that its
// encoding shrinks by excess bytes. Escapes make some bytes weigh up to six
// when encoded, so the cut is in proportion to the encoded size, which is
// close and keeps most of a heavily escaped content; after a few cuts that
// fell short it is the excess itself, which always does (each byte cut
// saves at least one encoded byte).
func contentKeep(content string, excess, cuts int) int {
	if cuts >= 4 {
		return len(content) - excess
	}
	enc, err := json.Marshal(content)
	if err != nil {
		return len(content) - excess
	}
	encLen := len(enc) - 2 // the quotes
	keep := int(int64(len(content)) * int64(encLen-excess) / int64(encLen))
	return min(keep, len(content)-1)
}

// cutUTF8 returns s cut to at most n bytes (none when n <= 0), not in the
// middle of a character.
func cutUTF8(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if n >= len(s) {
		return s
	}
	for i := 0; i < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(s[n]); i++ {
		n--
	}
	return s[:n]
}
