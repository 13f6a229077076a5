package events

import _ "embed"

// RequestCompletedSchema is the JSON Schema of the RequestCompleted v1 body,
// for systems that consume the events.
//
//go:embed request_completed.schema.json
var RequestCompletedSchema []byte
