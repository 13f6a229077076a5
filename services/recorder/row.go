package recorder

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// toRow turns one event body into a table row (in the order of columns).
// received stands in for a missing timestamp. The event column keeps the
// whole event except request_body and response, which have columns of
// their own; Query puts them back.
func toRow(data []byte, received time.Time) (string, []any, error) {
	e, err := events.Unmarshal(data)
	if err != nil {
		return "", nil, err
	}
	if e.RequestID == "" {
		return "", nil, errors.New("no request_id")
	}
	ts := e.Timestamp
	if ts.IsZero() {
		ts = received
	}
	body := jsonb(e.RequestBody)
	var resp, tags []byte
	if e.Response != nil {
		if resp, err = json.Marshal(e.Response); err != nil {
			return "", nil, err
		}
	}
	if len(e.Tags) > 0 {
		if tags, err = json.Marshal(e.Tags); err != nil {
			return "", nil, err
		}
	}
	ev, err := eventColumn(e)
	if err != nil {
		return "", nil, err
	}
	return e.RequestID, []any{
		text(e.RequestID), ts.UTC(), text(e.KeyID), text(e.KeyName), text(e.UserID), text(e.Model), text(e.Endpoint),
		int32(e.StatusCode), e.IsStream, e.Usage.PromptTokens, e.Usage.CompletionTokens, e.Usage.TotalTokens,
		text(e.UsageSource), e.LatencyMS, e.TTFTMS, text(e.BackendURL), text(e.ClientIP), text(e.Error),
		text(e.FinishReason), jsonb(tags), body, jsonb(resp), jsonb(ev),
	}, nil
}

// text drops NUL characters, which PostgreSQL text cannot hold.
func text(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// jsonb prepares JSON text for a jsonb column: null and empty become SQL
// NULL, and \u0000 escapes, which jsonb rejects, become \ufffd.
func jsonb(b []byte) any {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" {
		return nil
	}
	if bytes.Contains(b, []byte(`\u0000`)) {
		b = replaceNULEscapes(b)
	}
	return string(b)
}

// replaceNULEscapes rewrites every \u0000 escape of a JSON text as \ufffd,
// leaving an escaped backslash followed by "u0000" alone.
func replaceNULEscapes(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 >= len(b) {
			out = append(out, b[i])
			continue
		}
		if b[i+1] == 'u' && i+6 <= len(b) && string(b[i+2:i+6]) == "0000" {
			out = append(out, `\ufffd`...)
			i += 5
			continue
		}
		out = append(out, b[i], b[i+1])
		i++
	}
	return out
}

// Positions in a row of the columns writeEach rewrites.
var (
	colRequestBody = slices.Index(columns, "request_body")
	colResponse    = slices.Index(columns, "response")
	colEvent       = slices.Index(columns, "event")
)

// bodyAsText returns a copy of row whose request_body holds the client's
// JSON text as a JSON string. jsonb refuses some texts that are valid JSON
// to Go (a lone surrogate escape such as \ud800, a number such as
// 1e1000000); as a string the text is kept and the row stored. The
// response needs no such form: it is encoded here, from Go strings.
func bodyAsText(row []any) []any {
	out := slices.Clone(row)
	if s, ok := out[colRequestBody].(string); ok {
		b, _ := json.Marshal(s) // a string always encodes
		out[colRequestBody] = string(b)
	}
	return out
}

// withoutBodies returns a copy of row with no request_body or response and
// with truncated set in its event, which marks that content was left out.
// It is the last resort for a row PostgreSQL refuses even with its body as
// a string.
func withoutBodies(row []any) ([]any, error) {
	out := slices.Clone(row)
	out[colRequestBody], out[colResponse] = nil, nil
	ev, _ := out[colEvent].(string)
	e, err := events.Unmarshal([]byte(ev))
	if err != nil {
		return nil, err
	}
	e.Truncated = true
	b, err := eventColumn(e)
	if err != nil {
		return nil, err
	}
	out[colEvent] = jsonb(b)
	return out, nil
}

// eventColumn is the event column of e: the event without its request_body
// and response members, which have columns of their own (a SQL reader of
// event->'request_body' would otherwise find null beside a body).
func eventColumn(e events.RequestCompleted) ([]byte, error) {
	e.RequestBody, e.Response = nil, nil
	b, err := e.Marshal()
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	delete(m, "request_body")
	delete(m, "response")
	return json.Marshal(m)
}
