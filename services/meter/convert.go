package meter

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
	"github.com/llmproxy/llmproxy/pkg/ledger"
)

// meteredFields are the fields of events.RequestCompleted the meter reads,
// under the same JSON names. Decoding only these skips the request body and
// captured response, which dominate the cost of decoding the whole event.
type meteredFields struct {
	RequestID string    `json:"request_id"`
	UserID    string    `json:"user_id"`
	KeyID     string    `json:"key_id"`
	Model     string    `json:"model"`
	Timestamp time.Time `json:"timestamp"`
	// LatencyMS is read leniently (endedAt): it only places the tokens
	// in the TPM window, and an event is never refused for it.
	LatencyMS   json.RawMessage `json:"latency_ms"`
	Usage       events.Usage    `json:"usage"`
	Reservation int64           `json:"reservation"`
	BackendURL  string          `json:"backend_url"`
}

// errNothingToApply marks an event of a request refused before it reached a
// backend (bad key, rate limit, bad input): it used no tokens and holds no
// reservation, so the ledger has nothing to count. Such events stay in the
// stream for the request log and the webhooks.
var errNothingToApply = errors.New("request refused before a backend: nothing to apply")

// maxLatency bounds the latency an event may claim when it places the
// request's tokens in the TPM window.
const maxLatency = 24 * time.Hour

// endedAt is when a request that began at start and took latencyMS (a JSON
// number of milliseconds) ended: start when latencyMS is missing, not a
// number or negative, at most maxLatency after start.
func endedAt(start time.Time, latencyMS json.RawMessage) time.Time {
	ms, err := strconv.ParseFloat(string(latencyMS), 64)
	if err != nil || !(ms > 0) {
		return start
	}
	return start.Add(time.Duration(min(ms, float64(maxLatency.Milliseconds())) * float64(time.Millisecond)))
}

// entryFromEvent decodes one RequestCompleted body into the ledger entry it
// stands for. An error means the body can never be applied (a poison
// message); it says why, without the body.
func entryFromEvent(data []byte) (ledger.Entry, error) {
	var ev meteredFields
	if !decodeMetered(data, &ev) {
		ev = meteredFields{}
		if err := json.Unmarshal(data, &ev); err != nil {
			return ledger.Entry{}, fmt.Errorf("decode event: %w", err)
		}
	}
	if ev.Usage.PromptTokens < 0 || ev.Usage.CompletionTokens < 0 || ev.Reservation < 0 {
		return ledger.Entry{}, fmt.Errorf("request %s: negative token count", ev.RequestID)
	}
	keyID := ev.KeyID
	if keyID == "" {
		// The gateway publishes keyless requests under the anonymous
		// subject; count them there too.
		keyID = events.AnonymousKeyID
	}
	e := ledger.Entry{
		RequestID:        ev.RequestID,
		KeyID:            keyID,
		UserID:           ev.UserID,
		Model:            ev.Model,
		Time:             ev.Timestamp,
		Ended:            endedAt(ev.Timestamp, ev.LatencyMS),
		PromptTokens:     ev.Usage.PromptTokens,
		CompletionTokens: ev.Usage.CompletionTokens,
		Reserved:         ev.Reservation,
	}
	if err := e.Validate(); err != nil {
		return ledger.Entry{}, err
	}
	if ev.BackendURL == "" && e.PromptTokens == 0 && e.CompletionTokens == 0 && e.Reserved == 0 {
		return ledger.Entry{}, errNothingToApply
	}
	return e, nil
}
