//go:build !unix

package publish

import "os"

// lockDir is a no-op where flock(2) is missing: keep one publisher per
// outbox directory by configuration.
func lockDir(*os.File) error { return nil }
