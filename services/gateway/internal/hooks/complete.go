package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/llmproxy/llmproxy/pkg/events"
	lua "github.com/yuin/gopher-lua"
)

// OnComplete runs on_complete(ev) before ev is published. The script sees
// the event as a table with the JSON field names of events.RequestCompleted.
// Three parts are written back into ev; changes to any other field are
// discarded:
//
//   - ev.tags, a table of string to string (values go through tostring);
//   - ev.request_body, a body object (get/set/table/replace/raw/set_raw),
//     re-encoded only if changed; it must stay JSON (set_raw("") sets null);
//   - ev.response.content, when the event carries a captured response.
//
// On error (a script error, a timeout, a body that is not JSON) the hook
// fails closed for content: ev.request_body becomes null, a captured
// response is dropped, and ev.Tags are the tags as the scripts had left them
// plus "lua_error": "on_complete"; other edits are discarded and the
// accounting fields stay as they were. A redaction script that fails thus
// never lets through what it was meant to remove.
func (e *Engine) OnComplete(ctx context.Context, ev *events.RequestCompleted) error {
	if !e.has[hookComplete] {
		return nil
	}
	view := *ev
	view.RequestBody = nil // handed over as a body object instead
	raw, err := json.Marshal(&view)
	if err != nil {
		return fmt.Errorf("lua on_complete: encode event: %w", err)
	}
	generic, err := decodeJSON(raw)
	if err != nil {
		return fmt.Errorf("lua on_complete: decode event: %w", err)
	}
	var (
		tags     map[string]string
		content  *string
		newBody  []byte
		bodyEdit bool
		// tagsAtError are ev.tags as the scripts left them when one
		// failed.
		tagsAtError map[string]string
	)
	err = e.run(ctx, hookComplete, func(v *vm) error {
		L := v.L
		tbl, ok := toLua(L, generic).(*lua.LTable)
		if !ok {
			return fmt.Errorf("event is not an object")
		}
		body := newJSONBody(ev.RequestBody)
		body.v = v
		tbl.RawSetString("request_body", v.newBody(body))
		if _, ok := tbl.RawGetString("tags").(*lua.LTable); !ok {
			tbl.RawSetString("tags", L.NewTable())
		}
		given := tbl.RawGetString("tags")
		// kept are the tags that survive a failure, metadata rather than
		// content: those the scripts set, in the table they were given
		// if ev.tags no longer holds a table, without the values that
		// are not strings.
		kept := func() map[string]string {
			lv := tbl.RawGetString("tags")
			if _, ok := lv.(*lua.LTable); !ok {
				lv = given
			}
			t, _ := tagsFrom(lv)
			return t
		}
		for _, fn := range v.hooks[hookComplete] {
			if _, err := v.call(fn, tbl); err != nil {
				tagsAtError = kept()
				return err
			}
		}

		var err error
		if tags, err = tagsFrom(tbl.RawGetString("tags")); err != nil {
			tagsAtError = kept()
			return err
		}
		if ev.Response != nil {
			if resp, ok := tbl.RawGetString("response").(*lua.LTable); ok {
				if c, ok := resp.RawGetString("content").(lua.LString); ok {
					s := string(c)
					content = &s
				}
			}
		}
		if bodyEdit = body.changed; bodyEdit {
			if newBody, err = body.bytes(); err == nil {
				newBody, err = eventBody(newBody)
			}
		}
		return err
	})
	if err != nil {
		if tagsAtError == nil {
			tagsAtError = tags // the body a script set is not JSON
		}
		if tagsAtError == nil {
			tagsAtError = ev.Tags
		}
		failClosed(ev, tagsAtError)
		return err
	}
	ev.Tags = tags
	if content != nil {
		ev.Response.Content = *content
	}
	if bodyEdit {
		ev.RequestBody = newBody
	}
	return nil
}

// TagLuaError is the tag an event carries when on_complete failed on it; its
// value is the hook's name.
const TagLuaError = "lua_error"

// failClosed strips from ev what a failed on_complete may have been meant to
// redact, the request body and the captured response, and sets its tags to
// a copy of tags with TagLuaError added.
func failClosed(ev *events.RequestCompleted, tags map[string]string) {
	ev.RequestBody = json.RawMessage("null")
	ev.Response = nil
	kept := tags
	tags = make(map[string]string, len(kept)+1)
	for k, v := range kept {
		tags[k] = v
	}
	tags[TagLuaError] = HookComplete
	ev.Tags = tags
}

// eventBody checks a request body a script set for the event: it must be
// JSON, or the event could not be encoded and would be lost. An empty body
// stands for none (null). Tags and the response content are strings, which
// always encode.
func eventBody(b []byte) ([]byte, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return json.RawMessage("null"), nil
	}
	if !json.Valid(b) {
		return nil, errors.New("ev.request_body is not valid JSON")
	}
	return b, nil
}

func tagsFrom(lv lua.LValue) (map[string]string, error) {
	t, ok := lv.(*lua.LTable)
	if !ok {
		if lv == lua.LNil {
			return nil, nil
		}
		return nil, fmt.Errorf("ev.tags is a %s, want a table", lv.Type())
	}
	var (
		tags map[string]string
		bad  error
	)
	t.ForEach(func(k, x lua.LValue) {
		if kt := k.Type(); kt != lua.LTString && kt != lua.LTNumber {
			if bad == nil {
				bad = fmt.Errorf("ev.tags has a %s as a name, want a string", kt)
			}
			return
		}
		switch x.Type() {
		case lua.LTString, lua.LTNumber, lua.LTBool:
		default:
			// A table's or a function's tostring is its address.
			if bad == nil {
				bad = fmt.Errorf("ev.tags[%q] is a %s, want a string", clipTag(k.String()), x.Type())
			}
			return
		}
		if tags == nil {
			tags = make(map[string]string)
		}
		tags[k.String()] = x.String()
	})
	return tags, bad
}

// clipTag bounds a tag name quoted in an error.
func clipTag(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
