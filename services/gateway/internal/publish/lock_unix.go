//go:build unix

package publish

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive advisory lock on f, the outbox's ack file, so
// that a second publisher (another gateway on the same data_dir) fails at
// start instead of interleaving its records. Closing f releases it.
func lockDir(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return fmt.Errorf("outbox %s is in use by another publisher", f.Name())
	}
	if err != nil {
		return fmt.Errorf("lock outbox: %w", err)
	}
	return nil
}
