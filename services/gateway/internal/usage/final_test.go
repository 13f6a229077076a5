package usage

import (
	"testing"
)

func TestIsFinalEvent(t *testing.T) {
	cases := []struct {
		name string
		f    Format
		ev   string
		want bool
	}{
		{"openai done", FormatOpenAISSE, "data: [DONE]\n\n", true},
		{"openai done crlf", FormatOpenAISSE, "data:[DONE]\r\n\r\n", true},
		{"openai done in text", FormatOpenAISSE, "data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}\n\n", false},
		{"openai done in a comment", FormatOpenAISSE, ": data: [DONE]\n\n", false},
		{"openai chat text naming response.completed", FormatOpenAISSE, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"the event response.completed ends it\"}}]}\n\n", false},
		{"openai chat text quoting a type", FormatOpenAISSE, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"{\\\"type\\\":\\\"response.completed\\\"}\"}}]}\n\n", false},
		{"responses completed", FormatOpenAISSE, "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n", true},
		{"responses completed, data only", FormatOpenAISSE, "data: {\"type\":\"response.completed\",\"response\":{}}\n\n", true},
		{"responses completed, event only", FormatOpenAISSE, "event: response.completed\ndata: {}\n\n", true},
		{"responses incomplete", FormatOpenAISSE, "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{}}\n\n", true},
		{"responses failed", FormatOpenAISSE, "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{}}\n\n", true},
		{"responses delta naming response.completed", FormatOpenAISSE, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\"}\n\n", false},
		{"responses delta quoting a type", FormatOpenAISSE, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"\\\"type\\\":\\\"response.completed\\\"\"}\n\n", false},
		{"responses nested type", FormatOpenAISSE, "data: {\"type\":\"response.output_item.done\",\"item\":{\"type\":\"response.completed\"}}\n\n", false},
		{"responses delta, data only", FormatOpenAISSE, "data: {\"delta\":\"response.completed\",\"type\":\"response.output_text.delta\"}\n\n", false},
		{"llama.cpp native stop", FormatOpenAISSE, "data: {\"content\":\"\",\"id_slot\":0,\"stop\":true,\"tokens_predicted\":5,\"tokens_evaluated\":6}\n\n", true},
		{"llama.cpp native partial", FormatOpenAISSE, "data: {\"content\":\" true\",\"stop\":false,\"id_slot\":0}\n\n", false},
		{"openai tool arguments with stop:true", FormatOpenAISSE, "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"{\\\"stop\\\": true}\"}}]}}]}\n\n", false},
		{"anthropic stop", FormatAnthropicSSE, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", true},
		{"anthropic stop, data only", FormatAnthropicSSE, "data: {\"type\": \"message_stop\"}\r\n\r\n", true},
		{"anthropic delta", FormatAnthropicSSE, "event: message_delta\ndata: {}\n\n", false},
		{"anthropic text naming message_stop", FormatAnthropicSSE, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"send message_stop\"}}\n\n", false},
		{"anthropic text quoting a type", FormatAnthropicSSE, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"{\\\"type\\\":\\\"message_stop\\\"}\"}}\n\n", false},
		{"anthropic tool json naming message_stop", FormatAnthropicSSE, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"event\\\": \\\"message_stop\"}}\n\n", false},
		{"ollama done", FormatOllamaNDJSON, "{\"done\":true,\"eval_count\":3}\n", true},
		{"ollama done, spaced", FormatOllamaNDJSON, "{\"model\":\"m\", \"done\" : true}\n", true},
		{"ollama not done", FormatOllamaNDJSON, "{\"done\":false}\n", false},
		{"ollama text naming done:true", FormatOllamaNDJSON, "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"set \\\"done\\\":true here\"},\"done\":false}\n", false},
		{"ollama nested done", FormatOllamaNDJSON, "{\"message\":{\"done\":true},\"done\":false}\n", false},
		{"ollama tool call with done:true", FormatOllamaNDJSON, "{\"message\":{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":{\"done\":true}}}]},\"done\":false}\n", false},
		{"tgi last", FormatTGISSE, "data:{\"token\":{},\"generated_text\":\"hi\",\"details\":{}}\n\n", true},
		{"tgi not last", FormatTGISSE, "data:{\"token\":{},\"generated_text\":null}\n\n", false},
		{"tgi token naming generated_text", FormatTGISSE, "data:{\"index\":3,\"token\":{\"id\":5,\"text\":\"\\\"generated_text\\\":\\\"\",\"special\":false},\"generated_text\":null,\"details\":null}\n\n", false},
		{"tgi nested generated_text", FormatTGISSE, "data:{\"token\":{\"generated_text\":\"x\"},\"generated_text\":null}\n\n", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := IsFinalEvent(c.f, []byte(c.ev)); got != c.want {
				t.Errorf("IsFinalEvent(%v, %q) = %v, want %v", c.f, c.ev, got, c.want)
			}
		})
	}
}

// TestIsFinalEventGoldens: in every captured stream exactly the event that
// ends it is final.
func TestIsFinalEventGoldens(t *testing.T) {
	for _, g := range goldens {
		if !g.format.Streaming() {
			continue
		}
		t.Run(g.file, func(t *testing.T) {
			var evs [][]byte
			sp := NewSplitter(g.format)
			emit := func(ev []byte) error {
				evs = append(evs, append([]byte(nil), ev...))
				return nil
			}
			_ = sp.Feed(readGolden(t, g.file), emit)
			_ = sp.Flush(emit)
			last := len(evs) - 1
			for last > 0 && len(evs[last]) > 0 && (evs[last][0] == '\n' || evs[last][0] == '\r') {
				last-- // trailing blank lines
			}
			for i, ev := range evs {
				if got := IsFinalEvent(g.format, ev); got != (i == last) {
					t.Errorf("event %d of %d: final = %v: %q", i, len(evs), got, ev)
				}
			}
		})
	}
}

func TestIsFinalEventDoesNotAllocate(t *testing.T) {
	evs := []struct {
		f  Format
		ev string
	}{
		{FormatOpenAISSE, "data: [DONE]\n\n"},
		{FormatOpenAISSE, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\"}\n\n"},
		{FormatOpenAISSE, "data: {\"type\":\"response.completed\",\"response\":{}}\n\n"},
		{FormatAnthropicSSE, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"},
		{FormatAnthropicSSE, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"message_stop\"}}\n\n"},
		{FormatOllamaNDJSON, "{\"message\":{\"content\":\"true\"},\"done\":false}\n"},
		{FormatTGISSE, "data:{\"token\":{},\"generated_text\":\"hi\",\"details\":{}}\n\n"},
		{FormatOpenAISSE, "data: {\"content\":\"\",\"stop\":true,\"tokens_predicted\":5}\n\n"},
	}
	for _, e := range evs {
		ev := []byte(e.ev)
		if n := testing.AllocsPerRun(100, func() { IsFinalEvent(e.f, ev) }); n != 0 {
			t.Errorf("IsFinalEvent(%v, %q): %v allocations", e.f, e.ev, n)
		}
	}
}

// TestResponsesStreamCutHasNoFinishReason: a Responses stream cut before its
// end has no finish reason; response.created's in_progress is no ending.
func TestResponsesStreamCutHasNoFinishReason(t *testing.T) {
	ex := NewExtractor(FormatOpenAISSE, Options{})
	ex.Event([]byte("event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"status\":\"in_progress\",\"model\":\"m\"}}\n\n"))
	ex.Event([]byte("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n"))
	if r := ex.Result(); r.FinishReason != "" {
		t.Fatalf("cut after response.created: finish %q, want none", r.FinishReason)
	}
	ex.Event([]byte("event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}}\n\n"))
	if r := ex.Result(); r.FinishReason != "completed" {
		t.Fatalf("completed: finish %q", r.FinishReason)
	}
}
