package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// TestBackendErrorReplies: a backend's error reply a client could not read
// as one (an HTML page, plain text, an empty body) reaches it in OpenAI's
// error shape with the backend's status; a 401 from the backend (the
// gateway's credentials for it refused) is a 502, not a 401 the client
// would blame on its own key; JSON error bodies, the engines' own, pass
// unchanged. The event records what the client got, and bills nothing.
func TestBackendErrorReplies(t *testing.T) {
	bodies := map[string]string{
		"html": "<html><body><h1>502 Bad Gateway</h1></body></html>",
		"text": "\n404 page not found\nmore",
		"json": `{"error":"Unauthorized"}`,
		"vllm": `{"object":"error","message":"context too long","code":400}`,
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, _ := strconv.Atoi(r.Header.Get("X-Test-Status"))
		if ct := r.Header.Get("X-Test-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		if ra := r.Header.Get("X-Test-Retry-After"); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		w.WriteHeader(st)
		_, _ = io.WriteString(w, bodies[r.Header.Get("X-Test-Body")])
	}))
	defer backend.Close()
	gw, s := newTestGateway(t, backend.URL, "")
	tests := []struct {
		name, status, ctype, body, retryAfter string
		wantStatus                            int
		wantType, wantMsg, wantBody           string
	}{
		{name: "html 502", status: "502", ctype: "text/html", body: "html",
			wantStatus: 502, wantType: "api_error", wantMsg: "answered 502 Bad Gateway"},
		{name: "plain 404 with its first line", status: "404", ctype: "text/plain; charset=utf-8", body: "text",
			wantStatus: 404, wantType: "invalid_request_error", wantMsg: "answered 404 Not Found: 404 page not found"},
		{name: "empty 503 keeps Retry-After", status: "503", retryAfter: "7",
			wantStatus: 503, wantType: "api_error", wantMsg: "answered 503 Service Unavailable"},
		{name: "401 is the gateway's credentials", status: "401", ctype: "application/json", body: "json",
			wantStatus: 502, wantType: "api_error", wantMsg: "answered 401 Unauthorized: it refused the gateway's credentials"},
		{name: "JSON error passes", status: "400", ctype: "application/json", body: "vllm",
			wantStatus: 400, wantBody: `{"object":"error","message":"context too long","code":400}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := withKey()
			hdr["X-Test-Status"], hdr["X-Test-Type"], hdr["X-Test-Body"], hdr["X-Test-Retry-After"] = tt.status, tt.ctype, tt.body, tt.retryAfter
			resp, body := do(t, "POST", gw.URL+"/v1/chat/completions", `{"model":"m1","messages":[{"role":"user","content":"hi"}]}`, hdr)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantBody != "" {
				if string(body) != tt.wantBody {
					t.Fatalf("body %s, want it as the backend wrote it: %s", body, tt.wantBody)
				}
			} else {
				var e struct {
					Error struct{ Message, Type, Code string }
				}
				if err := json.Unmarshal(body, &e); err != nil || resp.Header.Get("Content-Type") != "application/json" {
					t.Fatalf("not an OpenAI error (%v, %s): %s", err, resp.Header.Get("Content-Type"), body)
				}
				if e.Error.Type != tt.wantType || e.Error.Code != "backend_error" || !strings.Contains(e.Error.Message, tt.wantMsg) {
					t.Fatalf("error %+v, want type %s, code backend_error, message with %q", e.Error, tt.wantType, tt.wantMsg)
				}
				if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
					t.Fatalf("Retry-After %q, want %q", got, tt.retryAfter)
				}
			}
			ev := s.next(t)
			if ev.StatusCode != tt.wantStatus || ev.Error != "backend_error" || ev.Usage.TotalTokens != 0 {
				t.Fatalf("event status %d, error %q, usage %+v", ev.StatusCode, ev.Error, ev.Usage)
			}
		})
	}
}
