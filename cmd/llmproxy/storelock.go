package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// storeLockFile is the file under data_dir whose lock makes one process at
// a time the user of the embedded NATS store: `llmproxy serve` (target
// all), or a CLI command that opens the store because no server runs. Two
// nats-servers on one store directory would corrupt it, and nats-server
// does not lock the directory itself.
const storeLockFile = "nats.lock"

// errStoreBusy reports that another process holds the store's lock.
var errStoreBusy = errors.New("the embedded NATS store is in use by another process")

// storeLock is a held lock on a data_dir's embedded NATS store. It must not
// be copied.
type storeLock struct {
	f *os.File
}

// lockStore takes the lock of cfg's embedded NATS store, waiting up to wait
// (or until ctx is done) for another holder to let go. The lock file then
// holds this process's pid, which a process that finds the lock taken
// names in its error. The kernel releases the lock when the process ends,
// however it ends: a crashed server leaves no stale lock.
func lockStore(ctx context.Context, cfg *config.Config, wait time.Duration) (*storeLock, error) {
	path := cfg.DataPath(storeLockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		// An *os.PathError: it names the file; the key names where
		// it comes from (a data_dir not writable by this user, say).
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err = tryFlock(f)
		if err == nil {
			break
		}
		if !errors.Is(err, errStoreBusy) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !time.Now().Before(deadline) || ctx.Err() != nil {
			f.Close()
			return nil, fmt.Errorf("data_dir %s: %w (pid %s)", cfg.DataPath(), errStoreBusy, storeHolder(cfg))
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &storeLock{f: f}, nil
}

// storeHolder is the pid written in cfg's store lock file, "?" when it
// cannot be read.
func storeHolder(cfg *config.Config) string {
	b, err := os.ReadFile(cfg.DataPath(storeLockFile))
	if s := strings.TrimSpace(string(b)); err == nil && s != "" {
		return s
	}
	return "?"
}

// release lets go of the lock.
func (l *storeLock) release() {
	_ = l.f.Close()
}
