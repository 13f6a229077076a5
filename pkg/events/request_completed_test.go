package events

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestSchemaMatchesStruct keeps the JSON Schema and the Go type in step:
// every field the type writes is described, every required field is written.
func TestSchemaMatchesStruct(t *testing.T) {
	var schema struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(RequestCompletedSchema, &schema); err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeOf(RequestCompleted{})
	var fields []string
	for i := 0; i < typ.NumField(); i++ {
		name, opts, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		fields = append(fields, name)
		if _, ok := schema.Properties[name]; !ok {
			t.Errorf("field %q is not in the schema", name)
		}
		if !strings.Contains(opts, "omitempty") && !contains(schema.Required, name) {
			t.Errorf("field %q is always written but not required by the schema", name)
		}
	}
	for _, r := range schema.Required {
		if !contains(fields, r) {
			t.Errorf("schema requires %q, which the type does not write", r)
		}
	}
	sort.Strings(fields)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestMarshalRoundTrip(t *testing.T) {
	ev := &RequestCompleted{RequestID: "r1", KeyID: "k", Usage: Usage{1, 2, 3}, Timestamp: time.Unix(1, 0).UTC()}
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Schema != SchemaRequestCompletedV1 || got.RequestID != "r1" || got.Usage.TotalTokens != 3 {
		t.Fatalf("round trip: %+v", got)
	}
	if !strings.Contains(string(b), `"request_body":null`) {
		t.Fatalf("request_body must be written even when empty: %s", b)
	}
}

func TestSubjectNeverWidens(t *testing.T) {
	for in, want := range map[string]string{
		"":        SubjectCompletedPrefix + "anonymous",
		"alpha":   SubjectCompletedPrefix + "alpha",
		"a.b*c>d": SubjectCompletedPrefix + "a_b_c_d",
	} {
		if got := Subject(in); got != want {
			t.Errorf("Subject(%q) = %q, want %q", in, got, want)
		}
	}
	// A token past the bound (a NATS protocol line is at most 4 KiB) keeps
	// its start and a hash of the whole: distinct ids stay distinct.
	long1, long2 := strings.Repeat("a", 5000)+"1", strings.Repeat("a", 5000)+"2"
	s1, s2 := Subject(long1), Subject(long2)
	if len(s1) != len(SubjectCompletedPrefix)+maxToken || s1 == s2 || !strings.HasPrefix(s1, SubjectCompletedPrefix+"aaaa") {
		t.Errorf("Subject of 5,001 bytes = %q (%d bytes), %q", s1, len(s1), s2)
	}
}
