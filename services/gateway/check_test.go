package gateway

import (
	"strings"
	"testing"
)

func TestCheckRedact(t *testing.T) {
	bad := CheckRedact([]string{"$.messages[*].content", "$.messages[", "sk-[A-Za-z0-9]+", "$..", "$['a']"})
	if len(bad) != 2 || bad[1] == nil || bad[3] == nil {
		t.Fatalf("CheckRedact = %v, want problems with rules 1 and 3", bad)
	}
	if msg := bad[1].Error(); strings.Contains(msg, "redact[") || !strings.Contains(msg, "unterminated [") {
		t.Errorf("rule 1: %q, want the parser's reason alone", msg)
	}
	if CheckRedact([]string{"$.a", "x+"}) != nil {
		t.Error("valid rules reported")
	}
}
