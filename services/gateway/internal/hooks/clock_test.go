package hooks

import "time"

// testTimeout is the hook timeout of tests that are not about timeouts: the
// deadline is wall-clock time, and a busy machine must not turn a slow call
// into a spurious failure.
const testTimeout = 5 * time.Second

func fixedNow() time.Time { return time.Unix(1700000000, 500_000_000) }
