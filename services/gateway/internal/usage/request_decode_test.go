package usage

import (
	"encoding/json"
	"reflect"
	"testing"
)

var requestSeeds = []string{
	`{"model":"m1","messages":[{"role":"user","content":"say hello"}],"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}`,
	` {"model":"m","messages":[{"role":"system","content":[{"type":"text","text":"a"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"1","function":{"name":"f","arguments":"{\"x\":1}"}}]}]} `,
	`{"model":"llama3","prompt":"hi","options":{"num_predict":5,"temperature":0.1},"stream":false}`,
	`{"inputs":"hi","parameters":{"max_new_tokens":20,"details":true}}`,
	`{"model":"c","system":"be nice","messages":[],"max_tokens":1024}`,
	`{"model":"r","input":[{"role":"user","content":"x"}],"instructions":"y","max_output_tokens":9,"tools":[{"type":"function"}]}`,
	`{"Model":"x"}`, `{"model":"a","model":"b"}`, `{"model":"\u0041"}`, `{"model":null}`, `{"model":5}`, `{"stream":null}`,
	`{"stream":"true"}`, `{"max_tokens":-1}`, `{"max_tokens":1.5}`, `{"max_tokens":null}`, `{"max_tokens":99999999999999999999}`,
	`{"stream_options":null}`, `{"stream_options":{"include_usage":null}}`, `{"stream_options":{"include_usage":true,"include_usage":false}}`,
	`{"messages":null}`, `{"messages":[null]}`, `{"messages":[1]}`, `{"messages":{}}`, `{"messages":[{"tool_calls":null}]}`,
	`{"messages":[{"tool_calls":[{"function":null}]}]}`, `{"messages":[{"content":"a","content":"b"}]}`, `{"ſtream":true}`,
	`{"options":{"num_predict":1,"num_predict":2}}`, `{"options":[]}`, `{"max_completion_tokens":0}`, `{"mo\u0064el":"x"}`,
	`{"n":3,"best_of":5}`, `{"n":null}`, `{"n":"2"}`, `{"best_of":1.5}`, `{"N":2}`, `{"prompt":[1,2,[3]]}`,
	`{"parameters":{"best_of":2,"max_new_tokens":3}}`, `{"parameters":{"best_of":null}}`, `{"parameters":{"best_of":"2"}}`,
}

// TestDecodeRequestMatchesEncodingJSON checks that whenever decodeRequest
// answers, it answers what json.Unmarshal does.
func TestDecodeRequestMatchesEncodingJSON(t *testing.T) {
	for _, s := range requestSeeds {
		checkDecodeRequest(t, []byte(s))
	}
	var r requestBody
	if !decodeRequest([]byte(requestSeeds[0]), &r) {
		t.Fatal("a plain chat request took the slow path")
	}
}

func checkDecodeRequest(t *testing.T, body []byte) {
	var fast requestBody
	if !decodeRequest(body, &fast) {
		return
	}
	var slow requestBody
	if err := json.Unmarshal(body, &slow); err != nil {
		t.Fatalf("decodeRequest accepted %q, json.Unmarshal says %v", body, err)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("decodeRequest(%q) = %+v, json.Unmarshal gives %+v", body, fast, slow)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkDecodeRequest(t, body) })
}

func BenchmarkParseRequest(b *testing.B) {
	body := []byte(`{"model":"m1","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"say hello to the benchmark please"}],"max_tokens":16,"stream":true}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRequest(body); err != nil {
			b.Fatal(err)
		}
	}
}
