package usage

import "testing"

func TestIsFinalEvent(t *testing.T) {
	cases := []struct {
		f    Format
		ev   string
		want bool
	}{
		{FormatOpenAISSE, "data: [DONE]\n\n", true},
		{FormatOpenAISSE, "data:[DONE]\r\n\r\n", true},
		{FormatOpenAISSE, "data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}\n\n", false},
		{FormatOpenAISSE, "event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n", true},
		{FormatAnthropicSSE, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", true},
		{FormatAnthropicSSE, "event: message_delta\ndata: {}\n\n", false},
		{FormatOllamaNDJSON, "{\"done\":true,\"eval_count\":3}\n", true},
		{FormatOllamaNDJSON, "{\"done\":false}\n", false},
		{FormatTGISSE, "data:{\"token\":{},\"generated_text\":\"hi\",\"details\":{}}\n\n", true},
		{FormatTGISSE, "data:{\"token\":{},\"generated_text\":null}\n\n", false},
	}
	for _, c := range cases {
		if got := IsFinalEvent(c.f, []byte(c.ev)); got != c.want {
			t.Errorf("IsFinalEvent(%v, %q) = %v, want %v", c.f, c.ev, got, c.want)
		}
	}
}
