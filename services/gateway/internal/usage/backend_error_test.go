package usage

import "testing"

// TestBackendErrorEvents: each engine's error inside a stream, as the
// engine writes it, is noticed; the text and usage before it are kept.
func TestBackendErrorEvents(t *testing.T) {
	tests := []struct {
		name   string
		format Format
		evs    []string
		want   bool
		text   string
	}{
		{"vllm mid-stream", FormatOpenAISSE, []string{
			"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
			"data: {\"error\": {\"message\": \"The engine is dead.\", \"type\": \"InternalServerError\", \"param\": null, \"code\": 500}}\n\n",
			"data: [DONE]\n\n"}, true, "Hel"},
		{"vllm older shape", FormatOpenAISSE, []string{
			"data: {\"error\": {\"object\": \"error\", \"message\": \"boom\", \"type\": \"BadRequestError\", \"param\": null, \"code\": 400}}\n\n",
			"data: [DONE]\n\n"}, true, ""},
		{"llama.cpp", FormatOpenAISSE, []string{
			"data: {\"error\":{\"code\":500,\"message\":\"failed to decode the batch\",\"type\":\"server_error\"}}\n\n"}, true, ""},
		{"llama.cpp anthropic", FormatAnthropicSSE, []string{
			"event: error\ndata: {\"code\":500,\"message\":\"failed to decode the batch\",\"type\":\"server_error\"}\n\n"}, true, ""},
		{"responses error event", FormatOpenAISSE, []string{
			"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"boom\",\"param\":null,\"sequence_number\":3}\n\n"}, true, ""},
		{"anthropic overloaded", FormatAnthropicSSE, []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
			"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n"}, true, ""},
		{"tgi validation", FormatTGISSE, []string{
			"data:{\"error\":\"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`\",\"error_type\":\"validation\"}\n\n"}, true, ""},
		{"tgi mid-stream", FormatTGISSE, []string{
			"data:{\"index\":1,\"token\":{\"id\":1,\"text\":\" Deep\",\"logprob\":-0.1,\"special\":false},\"generated_text\":null,\"details\":null}\n\n",
			"data:{\"error\":\"Request failed during generation: Server error: CUDA out of memory\",\"error_type\":\"generation\"}\n\n"}, true, " Deep"},
		{"ollama", FormatOllamaNDJSON, []string{
			"{\"model\":\"llama3.2\",\"created_at\":\"2024-07-22T20:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"The\"},\"done\":false}\n",
			"{\"error\":\"an error was encountered while running the model: unexpected EOF\"}\n"}, true, "The"},
		{"responses failed", FormatOpenAISSE, []string{
			"event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":4,\"response\":{\"id\":\"resp_1\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The model failed to generate a response.\"},\"usage\":null}}\n\n"}, true, ""},
		{"responses error null", FormatOpenAISSE, []string{
			"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"error\":null,\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}}\n\n"}, false, ""},
		{"text naming an error", FormatOpenAISSE, []string{
			"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"event: error {\\\"error\\\":1}\"}}]}\n\n"}, false, "event: error {\"error\":1}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := extract(tt.format, Options{}, tt.evs...)
			if r.BackendError != tt.want || r.Text != tt.text {
				t.Errorf("BackendError = %v, text %q; want %v, %q", r.BackendError, r.Text, tt.want, tt.text)
			}
		})
	}
}
