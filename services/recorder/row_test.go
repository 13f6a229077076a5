package recorder

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// rowOf is the table row of the test event r1.
func rowOf(t *testing.T) []any {
	t.Helper()
	data, err := event("r1", "key1", 200).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	_, row, err := toRow(data, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return row
}

func TestWithoutBodiesMarksTheEventTruncated(t *testing.T) {
	row := rowOf(t)
	bare, err := withoutBodies(row)
	if err != nil {
		t.Fatal(err)
	}
	if bare[colRequestBody] != nil || bare[colResponse] != nil {
		t.Fatalf("request_body, response = %v, %v; want NULL", bare[colRequestBody], bare[colResponse])
	}
	e, err := events.Unmarshal([]byte(bare[colEvent].(string)))
	if err != nil {
		t.Fatal(err)
	}
	if !e.Truncated || e.RequestID != "r1" || e.Usage.TotalTokens != 57 {
		t.Fatalf("event = %+v, want it whole with truncated set", e)
	}
	if row[colRequestBody] == nil {
		t.Fatal("withoutBodies changed the row it was given")
	}
}

// TestEventColumnHoldsNoBodies: the event column has no request_body or
// response member (they have columns of their own), not even a null one.
func TestEventColumnHoldsNoBodies(t *testing.T) {
	row := rowOf(t)
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(row[colEvent].(string)), &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["request_body"]; ok || m["response"] != nil || string(m["request_id"]) != `"r1"` {
		t.Fatalf("event column = %s", row[colEvent])
	}
	if row[colRequestBody] == nil {
		t.Fatal("the request body's own column is empty")
	}
}
