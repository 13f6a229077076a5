package recorder

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// clientIDCond selects by the event's client_request_id; its first half
// lets the partial index llmproxy_requests_client_id serve it.
const clientIDCond = "event ? 'client_request_id' AND event->>'client_request_id' = $%d"

// Query returns the requests in PostgreSQL that f selects, the newest
// f.Limit of them, oldest first. Each event is whole again: its request
// body and captured response come from their own columns.
func Query(ctx context.Context, pool *pgxpool.Pool, f Filter) ([]events.RequestCompleted, error) {
	f = f.withDefaults(time.Now())
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.RequestID != "" {
		add("request_id = $%d", f.RequestID)
	}
	if f.ClientRequestID != "" {
		add(clientIDCond, f.ClientRequestID)
	}
	if f.KeyID != "" {
		add("key_id = $%d", f.KeyID)
	}
	if !f.Since.IsZero() {
		add("ts >= $%d", f.Since)
	}
	if f.Status != 0 {
		add("status_code = $%d", f.Status)
	}
	sql := `SELECT event::text, request_body::text, response::text FROM ` + Table
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, f.Limit)
	sql += fmt.Sprintf(" ORDER BY ts DESC, request_id DESC LIMIT $%d", len(args))

	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("query request log: %w", err)
	}
	defer rows.Close()
	var out []events.RequestCompleted
	for rows.Next() {
		var ev, body, resp []byte
		if err := rows.Scan(&ev, &body, &resp); err != nil {
			return nil, fmt.Errorf("query request log: %w", err)
		}
		e, err := events.Unmarshal(ev)
		if err != nil {
			return nil, fmt.Errorf("query request log: decode event: %w", err)
		}
		if body != nil {
			e.RequestBody = json.RawMessage(body)
		}
		if resp != nil {
			e.Response = new(events.CapturedResponse)
			if err := json.Unmarshal(resp, e.Response); err != nil {
				return nil, fmt.Errorf("query request log: decode response of %s: %w", e.RequestID, err)
			}
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query request log: %w", err)
	}
	slices.Reverse(out)
	return out, nil
}
