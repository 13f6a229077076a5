package gateway

import (
	"errors"

	"github.com/llmproxy/llmproxy/services/gateway/internal/redact"
)

// CheckRedact compiles each logging.redact rule the way the gateway will
// and returns the problem of each rule that does not compile, by its index
// in rules (nil when every rule compiles), so that `llmproxy config check`
// and `serve` can name the rule's line. CheckScripts does the same for Lua.
func CheckRedact(rules []string) map[int]error {
	var bad map[int]error
	for i, rule := range rules {
		if _, err := redact.Compile([]string{rule}); err != nil {
			if inner := errors.Unwrap(err); inner != nil {
				err = inner // without Compile's "redact[0] …" prefix
			}
			if bad == nil {
				bad = map[int]error{}
			}
			bad[i] = err
		}
	}
	return bad
}
