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
