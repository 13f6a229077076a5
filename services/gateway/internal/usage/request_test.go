package usage

import (
	"encoding/json"
	"errors"
	"math"
	"testing"
)

func TestAddIncludeUsage(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		want  string
		added bool
	}{
		{"absent", `{"model":"m","stream":true,"messages":[]}`,
			`{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}`, true},
		{"absent, pretty", "{\n  \"stream\": true,\n  \"model\": \"m\"\n}\n",
			"{\n  \"stream\": true,\n  \"model\": \"m\"\n,\"stream_options\":{\"include_usage\":true}}\n", true},
		{"present false", `{"stream":true,"stream_options":{"include_usage":false}}`,
			`{"stream":true,"stream_options":{"include_usage":true}}`, true},
		{"present false, spaced", `{"stream" : true , "stream_options" : { "include_usage" : false } }`,
			`{"stream" : true , "stream_options" : { "include_usage" : true } }`, true},
		{"present true", `{"stream":true,"stream_options":{"include_usage":true}}`,
			`{"stream":true,"stream_options":{"include_usage":true}}`, false},
		{"present null", `{"stream":true,"stream_options":{"include_usage":null}}`,
			`{"stream":true,"stream_options":{"include_usage":true}}`, true},
		{"stream_options null", `{"stream":true,"stream_options":null}`,
			`{"stream":true,"stream_options":{"include_usage":true}}`, true},
		{"other options kept", `{"stream":true,"stream_options":{"continuous_usage_stats":true}}`,
			`{"stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true}}`, true},
		{"empty options", "{\"stream\":true,\"stream_options\":{ \t}}",
			"{\"stream\":true,\"stream_options\":{\"include_usage\":true \t}}", true},
		{"non-stream untouched", `{"model":"m","stream":false}`, `{"model":"m","stream":false}`, false},
		{"stream absent untouched", `{"model":"m"}`, `{"model":"m"}`, false},
		{"stream string untouched", `{"stream":"true"}`, `{"stream":"true"}`, false},
		{"nested stream ignored", `{"x":{"stream":true}}`, `{"x":{"stream":true}}`, false},
		{"nested include_usage ignored", `{"stream":true,"stream_options":{"x":{"include_usage":true}}}`,
			`{"stream":true,"stream_options":{"x":{"include_usage":true},"include_usage":true}}`, true},
		{"tabs and CRLF", "{\r\n\t\"stream\":\ttrue\r\n}\r\n",
			"{\r\n\t\"stream\":\ttrue\r\n,\"stream_options\":{\"include_usage\":true}}\r\n", true},
		{"escaped stream", `{"stre\u0061m":true}`,
			`{"stre\u0061m":true,"stream_options":{"include_usage":true}}`, true},
		{"escaped options, the last one taken", `{"stream":true,"stream_options":{"include_usage":false},"stream\u005foptions":{"include_usage":false}}`,
			`{"stream":true,"stream_options":{"include_usage":false},"stream\u005foptions":{"include_usage":true}}`, true},
		{"escaped include_usage", `{"stream":true,"stream_options":{"include\u005fusage":false}}`,
			`{"stream":true,"stream_options":{"include\u005fusage":true}}`, true},
		{"unicode kept", `{"stream":true,"messages":[{"content":"h\u00e9 – ok"}]}`,
			`{"stream":true,"messages":[{"content":"h\u00e9 – ok"}],"stream_options":{"include_usage":true}}`, true},
	}
	for _, tt := range tests {
		got, added, err := AddIncludeUsage([]byte(tt.in))
		if err != nil {
			t.Errorf("%s: err %v", tt.name, err)
			continue
		}
		if string(got) != tt.want || added != tt.added {
			t.Errorf("%s:\n got %s (added=%v)\nwant %s (added=%v)", tt.name, got, added, tt.want, tt.added)
		}
		if !json.Valid(got) {
			t.Errorf("%s: output is not valid JSON", tt.name)
		}
	}
	for _, bad := range []string{``, `{`, `[1]`, `{"stream":true}x`, `null`} {
		if _, _, err := AddIncludeUsage([]byte(bad)); err == nil {
			t.Errorf("AddIncludeUsage(%q): no error", bad)
		}
	}
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want RequestInfo
	}{
		{"openai chat", `{"model":"gpt","stream":true,"stream_options":{"include_usage":true},"max_tokens":64,
			"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image_url","image_url":{"url":"data:x"}}]}]}`,
			RequestInfo{Choices: 1, Model: "gpt", Stream: true, StreamSet: true, MaxTokens: 64, IncludeUsage: true, Messages: 2, Prompt: "Be brief.\nHi", Images: 1}},
		{"images: anthropic, nested in a tool result too", `{"model":"claude","max_tokens":10,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}},{"type":"text","text":"what?"},{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]}]}`,
			RequestInfo{Choices: 1, Model: "claude", MaxTokens: 10, Messages: 1, Prompt: "what?", Images: 2}},
		{"images: responses", `{"model":"gpt-4.1","input":[{"role":"user","content":[{"type":"input_text","text":"Hi"},{"type":"input_image","image_url":"data:image/png;base64,AAAA"},{"type":"input_image","image_url":"https://x/y.png"}]}]}`,
			RequestInfo{Choices: 1, Model: "gpt-4.1", Prompt: "Hi", Images: 2}},
		{"images: ollama chat and generate", `{"model":"llava","messages":[{"role":"user","content":"what is this?","images":["iVBOR","R0lGOD"]},{"role":"user","content":"and this?","images":null}],"images":["AAAA"]}`,
			RequestInfo{Choices: 1, Model: "llava", Messages: 2, Prompt: "what is this?\nand this?", Images: 3}},
		{"max_completion_tokens", `{"model":"o3","max_completion_tokens":100,"messages":[{"role":"user","content":"x"}]}`,
			RequestInfo{Choices: 1, Model: "o3", MaxTokens: 100, Messages: 1, Prompt: "x"}},
		{"completions prompt list", `{"model":"m","prompt":["a","b"],"max_tokens":5,"stream":false}`,
			RequestInfo{Choices: 1, Model: "m", StreamSet: true, MaxTokens: 5, Prompt: "a\nb", Prompts: 2}},
		{"embeddings", `{"model":"e","input":"hello world"}`,
			RequestInfo{Choices: 1, Model: "e", Prompt: "hello world"}},
		{"anthropic", `{"model":"claude","max_tokens":1024,"system":"Sys","messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"42"}]}]}],"stream":true}`,
			RequestInfo{Choices: 1, Model: "claude", Stream: true, StreamSet: true, MaxTokens: 1024, Messages: 2, Prompt: "Sys\n42"}},
		{"ollama", `{"model":"llama3.2","messages":[{"role":"user","content":"why?"}],"options":{"num_predict":128,"temperature":0}}`,
			RequestInfo{Choices: 1, Model: "llama3.2", NumPredict: 128, Messages: 1, Prompt: "why?"}},
		{"tgi", `{"inputs":"What is Deep Learning?","parameters":{"max_new_tokens":20,"details":true}}`,
			RequestInfo{Choices: 1, MaxNewTokens: 20, Prompt: "What is Deep Learning?"}},
		{"responses", `{"model":"gpt-4.1","instructions":"Be kind.","input":[{"role":"user","content":[{"type":"input_text","text":"Hello"}]}],"max_output_tokens":50}`,
			RequestInfo{Choices: 1, Model: "gpt-4.1", MaxTokens: 50, Prompt: "Be kind.\nHello"}},
		{"tools and tool calls", `{"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},{"role":"tool","tool_call_id":"c","content":"ok"}]}`,
			RequestInfo{Choices: 1, Model: "m", Messages: 2, Prompt: `{"x":1}` + "\nok\n" + `[{"type":"function","function":{"name":"f"}}]`}},
		{"include_usage false", `{"stream":true,"stream_options":{"include_usage":false}}`,
			RequestInfo{Choices: 1, Stream: true, StreamSet: true}},
		{"n and best_of", `{"model":"m","n":3,"best_of":5,"max_tokens":10,"messages":[{"role":"user","content":"x"}]}`,
			RequestInfo{Choices: 5, Model: "m", MaxTokens: 10, Messages: 1, Prompt: "x"}},
		{"tgi best_of", `{"inputs":"x","parameters":{"best_of":2,"max_new_tokens":10}}`,
			RequestInfo{Choices: 2, MaxNewTokens: 10, Prompt: "x"}},
		{"the largest cap", `{"model":"m","max_tokens":1,"max_completion_tokens":500,"max_output_tokens":7}`,
			RequestInfo{Choices: 1, Model: "m", MaxTokens: 500}},
		{"ollama's -1", `{"model":"m","max_tokens":3,"options":{"num_predict":-1}}`,
			RequestInfo{Choices: 1, Model: "m", MaxTokens: 3}},
		{"n", `{"model":"m","n":4,"messages":[{"role":"user","content":"x"}]}`,
			RequestInfo{Choices: 4, Model: "m", Messages: 1, Prompt: "x"}},
		{"token-id prompt", `{"model":"m","prompt":[1,2,3,4],"max_tokens":16}`,
			RequestInfo{Choices: 1, Model: "m", MaxTokens: 16, PromptTokenIDs: 4}},
		{"token-id batch", `{"model":"m","input":[[1,2],[3,4,5]]}`,
			RequestInfo{Choices: 1, Model: "m", PromptTokenIDs: 5}},
	}
	for _, tt := range tests {
		got, err := ParseRequest([]byte(tt.in))
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got != tt.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.name, got, tt.want)
		}
	}
	for _, bad := range []string{``, `{`, `[]`, `"x"`, `null`, `{"stream":"yes"}`, `{"max_tokens":"5"}`, `{"n":"2"}`, `{"a":1} {}`} {
		if _, err := ParseRequest([]byte(bad)); err == nil {
			t.Errorf("ParseRequest(%q): no error", bad)
		}
	}
}

// TestCompletionCap: the cap a reservation counts is the one the engine
// behind the path reads: Ollama's num_predict alone on its own API, TGI's
// max_new_tokens alone on its own, the largest of any elsewhere. A small
// max_tokens beside a large cap the engine reads must not make a small
// reservation.
func TestCompletionCap(t *testing.T) {
	for _, c := range []struct {
		path, body string
		want       int64
	}{
		{"/v1/chat/completions", `{"max_tokens":1,"max_completion_tokens":500}`, 500},
		{"/v1/chat/completions", `{"max_completion_tokens":1,"max_tokens":500}`, 500},
		{"/v1/responses", `{"max_output_tokens":300,"max_tokens":2}`, 300},
		{"/v1/chat/completions", `{"max_tokens":1,"options":{"num_predict":500}}`, 500},
		{"/v1/chat/completions", `{}`, 0},
		{"/api/chat", `{"max_tokens":1,"options":{"num_predict":500}}`, 500},
		{"/api/chat", `{"max_tokens":1}`, 0},
		{"/api/generate", `{"max_tokens":1,"options":{"num_predict":-1}}`, 0},
		{"/generate", `{"max_tokens":1,"parameters":{"max_new_tokens":500}}`, 500},
		{"/generate_stream", `{"max_tokens":1}`, 0},
		{"/v1/messages", `{"max_tokens":1024}`, 1024},
	} {
		info, err := ParseRequest([]byte(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.CompletionCap(c.path); got != c.want {
			t.Errorf("%s %s: cap %d, want %d", c.path, c.body, got, c.want)
		}
	}
}

// TestCompletionBound: the most completion tokens a request's cap lets an
// engine generate, every choice counted; none when an engine may not read
// the cap.
func TestCompletionBound(t *testing.T) {
	for _, c := range []struct {
		path, body string
		want       int64
	}{
		{"/v1/messages", `{"max_tokens":14}`, 14},
		{"/v1/chat/completions", `{"max_tokens":10,"n":3}`, 30},
		{"/v1/chat/completions", `{"max_tokens":10,"n":2,"best_of":4}`, 40},
		{"/v1/chat/completions", `{}`, 0},
		{"/v1/chat/completions", `{"MAX_TOKENS":10}`, 0},
		{"/api/chat", `{"max_tokens":10}`, 0},
		{"/api/chat", `{"options":{"num_predict":7}}`, 7},
		{"/v1/chat/completions", `{"max_tokens":9223372036854775807,"n":2}`, math.MaxInt64},
		{"/v1/completions", `{"max_tokens":4,"prompt":["a","b","c"]}`, 12},
		{"/v1/completions", `{"max_tokens":4,"n":2,"prompt":["a","b"]}`, 16},
		{"/v1/completions", `{"max_tokens":2,"prompt":[[1,2],[3,4]]}`, 4},
		{"/v1/completions", `{"max_tokens":2,"prompt":[1,2,3]}`, 2},
		{"/v1/chat/completions", `{"max_tokens":2,"prompt":["a","b"],"messages":[]}`, 2},
	} {
		info, err := ParseRequest([]byte(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.CompletionBound(c.path); got != c.want {
			t.Errorf("%s %s: bound %d, want %d", c.path, c.body, got, c.want)
		}
	}
}

// TestCapsUnderOtherSpellings: a cap under a name in another case is read
// by Go's JSON (Ollama) and ignored by Python's, Rust's and C++'s (vLLM,
// TGI, llama.cpp), and each reader keeps the last of a repeated name: the
// caps are the largest under any spelling, and CapsFolded says when only
// another spelling gave one, so that no engine's reading runs past the
// reservation.
func TestCapsUnderOtherSpellings(t *testing.T) {
	for _, c := range []struct {
		body                 string
		max, predict, maxNew int64
		folded               bool
	}{
		{`{"MAX_TOKENS":1}`, 1, 0, 0, true},
		{`{"max_tokens":100000,"MAX_TOKENS":1}`, 100000, 0, 0, false},
		{`{"MAX_TOKENS":1,"max_tokens":100000}`, 100000, 0, 0, false},
		{`{"max_tokens":9,"max_tokens":5}`, 9, 0, 0, false},
		{`{"max_tok\u0065ns":7}`, 7, 0, 0, false},
		{`{"Max_Completion_Tokens":3,"max_tokens":2}`, 3, 0, 0, false},
		{`{"options":{"NUM_PREDICT":500}}`, 0, 500, 0, true},
		{`{"OPTIONS":{"num_predict":500}}`, 0, 500, 0, true},
		{`{"options":{"num_predict":5},"Options":{"num_predict":500}}`, 0, 500, 0, false},
		{`{"parameters":{"Max_New_Tokens":64}}`, 0, 0, 64, true},
		{`{"ſtream":true,"max_tokens":4}`, 4, 0, 0, false},
	} {
		info, err := ParseRequest([]byte(c.body))
		if err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		if info.MaxTokens != c.max || info.NumPredict != c.predict || info.MaxNewTokens != c.maxNew || info.CapsFolded != c.folded {
			t.Errorf("%s: caps %d/%d/%d folded %v, want %d/%d/%d folded %v", c.body,
				info.MaxTokens, info.NumPredict, info.MaxNewTokens, info.CapsFolded, c.max, c.predict, c.maxNew, c.folded)
		}
	}
}

// TestAmbiguousFields: a model or a stream given twice, or under another
// spelling, with different values is refused (the gateway would check and
// bill one model while an engine that reads names exactly ran the other);
// the same value twice is not. n and best_of count at their largest.
func TestAmbiguousFields(t *testing.T) {
	for _, c := range []struct {
		body  string
		field string // "": accepted
	}{
		{`{"model":"expensive","MODEL":"cheap"}`, "model"},
		{`{"model":"a","model":"b"}`, "model"},
		{`{"Model":"a","model":"a"}`, ""},
		{`{"model":"a","model":"\u0061"}`, ""},
		{`{"stream":false,"STREAM":true}`, "stream"},
		{`{"stream":true,"Stream":true}`, ""},
		{`{"model":"a","MODEL":null}`, ""},
		{`{"model":"a","model":null}`, "model"},
		{`{"model":"a","mod\u0065l":null}`, "model"},
		{`{"model":null,"model":"a"}`, ""},
		{`{"stream":true,"stream":null}`, "stream"},
		{`{"model":null}`, ""},
	} {
		_, err := ParseRequest([]byte(c.body))
		var ae *AmbiguousFieldError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s: %v, want it accepted", c.body, err)
		case c.field != "" && (!errors.As(err, &ae) || ae.Field != c.field):
			t.Errorf("%s: %v, want an ambiguous %s", c.body, err, c.field)
		}
	}
	for body, want := range map[string]int64{
		`{"n":5,"N":1}`:                      5,
		`{"N":1,"n":5}`:                      5,
		`{"n":2,"BEST_OF":4}`:                4,
		`{"parameters":{"Best_Of":3},"n":1}`: 3,
	} {
		info, err := ParseRequest([]byte(body))
		if err != nil || info.Choices != want {
			t.Errorf("%s: choices %d (%v), want %d", body, info.Choices, err, want)
		}
	}
}
