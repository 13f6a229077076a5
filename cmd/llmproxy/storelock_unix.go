//go:build unix

package main

import (
	"errors"
	"os"
	"syscall"
)

// storeLocking reports whether this platform has flock(2): without it, a
// free lock proves nothing and the CLI also asks the address a running
// server would listen on.
const storeLocking = true

// tryFlock takes an exclusive advisory lock on f without waiting;
// errStoreBusy when another open file holds it. Closing f releases it, and
// so does the end of the process, however it ends.
func tryFlock(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errStoreBusy
	}
	return err
}
