package hooks

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/pkg/events"
)

const runaway = `
function on_auth(req) while true do end end
function on_request(req) while true do end end
function on_route(req) while true do end end
function on_response(req, resp) while true do end end
function on_complete(ev) while true do end end
`

// callHook runs the named hook once with throwaway arguments.
func callHook(ctx context.Context, e *Engine, hook string) error {
	r := &Request{Method: "POST", Path: "/v1/chat/completions", Headers: http.Header{}, Body: []byte(`{"model":"m"}`)}
	var err error
	switch hook {
	case HookAuth:
		_, err = e.OnAuth(ctx, r)
	case HookRequest:
		_, err = e.OnRequest(ctx, r)
	case HookRoute:
		_, err = e.OnRoute(ctx, r)
	case HookResponse:
		err = e.OnResponse(ctx, r, &Response{Status: 200, Body: []byte(`{}`)})
	case HookComplete:
		err = e.OnComplete(ctx, &events.RequestCompleted{RequestID: "r", RequestBody: []byte(`{}`)})
	}
	return err
}

func TestRunawayScriptTimesOut(t *testing.T) {
	const timeout = 50 * time.Millisecond
	const bound = timeout + 50*time.Millisecond
	e := newEngine(t, runaway, Options{Timeout: timeout})
	for _, hook := range hookNames {
		t.Run(hook, func(t *testing.T) {
			// The bound is wall-clock time, so an attempt can lose to a
			// busy machine's scheduler; one of three must make it, and
			// every one must time out.
			var took []time.Duration
			for range 3 {
				start := time.Now()
				err := callHook(context.Background(), e, hook)
				took = append(took, time.Since(start))
				if !errors.Is(err, ErrTimeout) {
					t.Fatalf("error = %v, want ErrTimeout", err)
				}
				if took[len(took)-1] <= bound {
					return
				}
			}
			t.Errorf("returned after %v, want at most %s", took, bound)
		})
	}
}

func TestCaughtTimeoutIsStillATimeout(t *testing.T) {
	e := newEngine(t, `
function on_route(req)
  pcall(function() while true do end end)
  return "late"
end`, Options{Timeout: 20 * time.Millisecond})
	if b, err := callRoute(e); !errors.Is(err, ErrTimeout) || b != "" {
		t.Fatalf("OnRoute = %q, %v; want ErrTimeout", b, err)
	}
}

func callRoute(e *Engine) (string, error) {
	return e.OnRoute(context.Background(), &Request{})
}

func TestCallerDeadlineWins(t *testing.T) {
	e := newEngine(t, runaway, Options{Timeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := callHook(ctx, e, HookRoute); !errors.Is(err, ErrTimeout) {
		t.Fatalf("error = %v, want ErrTimeout", err)
	}
}

func TestCallerCancelIsNotATimeout(t *testing.T) {
	e := newEngine(t, runaway, Options{Timeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(10*time.Millisecond, cancel)
	err := callHook(ctx, e, HookRoute)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
}

func TestConcurrentTimeoutsLeakNothing(t *testing.T) {
	e := newEngine(t, `
function on_request(req)
  if req.path == "/spin" then while true do end end
  req.body:set("model", "ok")
end`, Options{})
	baseline := runtime.NumGoroutine()

	// The deadline comes from the callers' contexts so that the normal call
	// at the end keeps the generous default.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
			defer cancel()
			_, err := e.OnRequest(ctx, &Request{Path: "/spin", Body: []byte(`{}`)})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("error = %v, want ErrTimeout", err)
		}
	}

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline+2 {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d, baseline %d", runtime.NumGoroutine(), baseline)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}

	r := &Request{Path: "/v1", Body: []byte(`{"model":"x"}`)}
	if _, err := e.OnRequest(context.Background(), r); err != nil || !strings.Contains(string(r.Body), `"ok"`) {
		t.Fatalf("normal call after timeouts: %v, body %s", err, r.Body)
	}
}

func TestPanicIsRecovered(t *testing.T) {
	e := newEngine(t, `function on_route(req) return "b" end`, Options{})
	err := e.run(context.Background(), hookRoute, func(v *vm) error { panic("bug") })
	if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "panic: bug") {
		t.Fatalf("error = %v", err)
	}
	if b, err := e.OnRoute(context.Background(), &Request{}); err != nil || b != "b" {
		t.Fatalf("OnRoute after panic = %q, %v", b, err)
	}
}

// TestConcurrentCalls is meant for -race: every hook, 200 goroutines, one
// engine, each call checking it saw its own request.
func TestConcurrentCalls(t *testing.T) {
	e := newEngine(t, `
function on_auth(req) return {id = req.headers:get("X-Id")} end
function on_request(req) req.body:set("seen", req.headers:get("X-Id")) end
function on_route(req) return "b-" .. req.headers:get("X-Id") end
function on_response(req, resp) resp.headers:set("X-Id", req.headers:get("X-Id")) end
function on_complete(ev) ev.tags.id = ev.request_id end
`, Options{Timeout: 5 * time.Second, PoolSize: 4})
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			id := string(rune('a'+i%26)) + strings.Repeat("x", i%7)
			r := &Request{Headers: http.Header{"X-Id": {id}}, Body: []byte(`{}`)}
			ctx := context.Background()
			if got, err := e.OnAuth(ctx, r); err != nil || got.ID != id {
				errs <- errors.Join(err, errors.New("on_auth saw another request"))
				return
			}
			if _, err := e.OnRequest(ctx, r); err != nil || string(r.Body) != `{"seen":"`+id+`"}` {
				errs <- errors.Join(err, errors.New("on_request: "+string(r.Body)))
				return
			}
			if b, err := e.OnRoute(ctx, r); err != nil || b != "b-"+id {
				errs <- errors.Join(err, errors.New("on_route: "+b))
				return
			}
			p := &Response{Status: 200}
			if err := e.OnResponse(ctx, r, p); err != nil || p.Headers.Get("X-Id") != id {
				errs <- errors.Join(err, errors.New("on_response saw another request"))
				return
			}
			ev := &events.RequestCompleted{RequestID: id}
			if err := e.OnComplete(ctx, ev); err != nil || ev.Tags["id"] != id {
				errs <- errors.Join(err, errors.New("on_complete saw another event"))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestManyPushedValuesEndInTime(t *testing.T) {
	e := newEngine(t, `
function on_request(req)
  local s = string.rep("a", 200000)
  local n = select('#', s:byte(1, -1))
  if n ~= 200000 then error("got " .. n .. " values") end
end`, Options{})
	start := time.Now()
	_, err := e.OnRequest(context.Background(), &Request{Headers: http.Header{}})
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("OnRequest returned after %v (err %v), want at most 2s", took, err)
	}
	if err != nil && !errors.Is(err, ErrTimeout) {
		t.Fatalf("error = %v, want nil or ErrTimeout", err)
	}
}
