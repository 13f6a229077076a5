package hooks

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
)

func TestBodyGet(t *testing.T) {
	b := newJSONBody([]byte(`{"model":"m","n":2,"so":{"include_usage":true},"messages":[{"role":"user"},{"role":"assistant"}],"x":null}`))
	tests := []struct {
		path string
		want any
	}{
		{"model", "m"},
		{"n", json.Number("2")},
		{"so.include_usage", true},
		{"messages.2.role", "assistant"},
		{"messages.0.role", nil},
		{"messages.3", nil},
		{"messages.first", nil},
		{"model.len", nil},
		{"missing.deeper", nil},
		{"x", nil},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			if got := b.get(tc.path); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("get(%q) = %#v, want %#v", tc.path, got, tc.want)
			}
		})
	}
}

func TestBodySet(t *testing.T) {
	tests := []struct {
		name, body, path string
		value            any
		want             string
		wantErr          string
	}{
		{"replace", `{"model":"a"}`, "model", "b", `{"model":"b"}`, ""},
		{"create nested", `{}`, "stream_options.include_usage", true, `{"stream_options":{"include_usage":true}}`, ""},
		{"empty body becomes object", ``, "model", "m", `{"model":"m"}`, ""},
		{"delete", `{"a":1,"b":2}`, "a", nil, `{"b":2}`, ""},
		{"delete missing path creates nothing", `{"a":1}`, "x.y", nil, `{"a":1}`, ""},
		{"array element", `{"m":[1,2]}`, "m.2", "z", `{"m":[1,"z"]}`, ""},
		{"array append", `{"m":[1]}`, "m.2", 5, `{"m":[1,5]}`, ""},
		{"array nested append", `{"m":[]}`, "m.1.role", "user", `{"m":[{"role":"user"}]}`, ""},
		{"array delete", `{"m":[1,2,3]}`, "m.2", nil, `{"m":[1,3]}`, ""},
		{"array out of range", `{"m":[1]}`, "m.5", 1, ``, "out of range"},
		{"through a string", `{"a":"s"}`, "a.b", 1, ``, "not an object or array"},
		{"not JSON", `nope`, "a", 1, ``, "body is not JSON"},
		{"empty path", `{}`, "", 1, ``, "empty path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newJSONBody([]byte(tc.body))
			err := b.set(tc.path, tc.value)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("set error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := b.bytes()
			if err != nil {
				t.Fatal(err)
			}
			jsonEqual(t, got, tc.want)
		})
	}
}

// FuzzBodyRoundTrip checks that a body decoded into Lua and encoded back
// is the same JSON, and that paths never panic.
func FuzzBodyRoundTrip(f *testing.F) {
	f.Add(`{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[],"stop":null,"t":0.7}`, "messages.1.content")
	f.Add(`[1,2,{"a":[]}]`, "3.a.1")
	f.Add(`{"a":{"b":{"c":1e300}}}`, "a.b.c")
	f.Add(`{"a":[1e700,-1e999]}`, "a.1")
	f.Add(`-0`, "0")
	f.Fuzz(func(t *testing.T, body, path string) {
		b := newJSONBody([]byte(body))
		_ = b.get(path)
		v, err := b.value()
		if err != nil || v == nil {
			return
		}
		L := lua.NewState(lua.Options{SkipOpenLibs: true})
		defer L.Close()
		installJSONMarkers(L, L.NewTable())
		back, err := fromLua(toLua(L, v), 0)
		if err != nil {
			if strings.Contains(err.Error(), "nested too deeply") {
				return
			}
			t.Fatalf("fromLua: %v", err)
		}
		want, _ := json.Marshal(normalise(v))
		got, _ := json.Marshal(normalise(back))
		if string(want) != string(got) {
			t.Fatalf("round trip of %s:\n got %s\nwant %s", body, got, want)
		}
		_ = b.set(path, "x")
	})
}

// normalise turns json.Number into float64 so that 1 and 1.0 compare equal:
// Lua has a single number type.
func normalise(v any) any {
	switch v := v.(type) {
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return v // beyond float64: compared as written
		}
		if f == 0 {
			return 0.0 // -0 is 0 for JSON's readers, and written as 0
		}
		return f
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = normalise(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = normalise(x)
		}
		return out
	}
	return v
}

// TestBodyNumberBeyondFloat64: a number a float64 cannot hold goes through
// a script that reads and writes back its table as the same JSON number
// (not +Inf, not a string), and the script sees its text.
func TestBodyNumberBeyondFloat64(t *testing.T) {
	e := newEngine(t, `
function on_request(req)
  local a = req.body:get("a")
  req.body:set("a", a)
  req.body:set("seen", tostring(a.big) .. " " .. type(a.big))
end`, Options{})
	r := &Request{Body: []byte(`{"a":{"big":1e700,"neg":-2E+999,"small":1.5}}`)}
	if _, err := e.OnRequest(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	decode := func(b []byte) any {
		d := json.NewDecoder(strings.NewReader(string(b)))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return v
	}
	want := `{"a":{"big":1e700,"neg":-2E+999,"small":1.5},"seen":"1e700 userdata"}`
	if got := decode(r.Body); !reflect.DeepEqual(got, decode([]byte(want))) {
		t.Fatalf("body = %s, want %s", r.Body, want)
	}
}
