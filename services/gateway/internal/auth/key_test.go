package auth

import (
	"strings"
	"testing"
)

func TestCheckModel(t *testing.T) {
	limited := &Key{AllowedModels: map[string]bool{"qwen": true, "llama": true}}
	open := &Key{}
	cases := []struct {
		name  string
		key   *Key
		model string
		code  string // "" = allowed
		says  []string
	}{
		{"allowed model", limited, "qwen", "", nil},
		{"other model", limited, "gpt-4", "model_not_allowed", []string{"gpt-4", "llama, qwen"}},
		{"no model on a limited key", limited, "", "model_not_allowed", []string{"only use the models llama, qwen", "must name one"}},
		{"any model on an open key", open, "gpt-4", "", nil},
		{"no model on an open key", open, "", "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := c.key.CheckModel(c.model)
			if c.code == "" {
				if e != nil {
					t.Fatalf("refused: %v", e)
				}
				return
			}
			if e == nil || e.Status != 403 || e.Code != c.code || e.Type != "permission_error" {
				t.Fatalf("got %+v, want 403 %s", e, c.code)
			}
			for _, s := range c.says {
				if !strings.Contains(e.Message, s) {
					t.Errorf("message %q does not say %q", e.Message, s)
				}
			}
		})
	}
}

func TestMask(t *testing.T) {
	cases := []struct{ secret, want string }{
		{"sk-llmproxy-AbCdEfGhIjKlMnOpQrStUvWxYz012345", "sk-llmproxy-…2345"}, // made by llmproxy keys
		{"sk-llmproxy-unit-test-0042", "sk-llmproxy-…0042"},
		{"sk-llmproxy-wrong-9999", "sk-llmproxy-…999"},
		{"sk-llmproxy-demo-123", "sk-llmproxy-…"},
		{"sk-llmproxy-", "sk-llmproxy-…"},
		{"0123456789", "…789"},
		{"sk-nope-123456789", "…6789"},
		{"team-a-0123456789abcdef", "…cdef"},
		{"sk-proj-0123456789abcdefghijklmnopqrstuvwxyz", "…wxyz"},
		{"12345678", "…"},
		{"abc", "…"},
		{"", "…"},
		{"secret-passwörd", "…örd"},
		{"secret-passwordö", "…rdö"},
	}
	for _, c := range cases {
		got := Mask(c.secret)
		if got != c.want {
			t.Errorf("Mask(%q) = %q, want %q", c.secret, got, c.want)
		}
		// Never more than a third of what is secret, nor more than four
		// characters of it.
		shown := len(got) - len("…")
		if strings.HasPrefix(c.secret, "sk-llmproxy-") {
			shown -= len("sk-llmproxy-")
		}
		secret := len(strings.TrimPrefix(c.secret, "sk-llmproxy-"))
		if shown > secret/3 || shown > 4 {
			t.Errorf("Mask(%q) = %q shows %d of %d secret bytes", c.secret, got, shown, secret)
		}
	}
}
