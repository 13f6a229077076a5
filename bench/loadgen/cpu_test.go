package main

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// TestCPUMeterCountsOwnWork: the meter sees this process's CPU time grow
// while it spins, and parses the NAME=PID flag.
func TestCPUMeterCountsOwnWork(t *testing.T) {
	var f cpuFlags
	pid := strconv.Itoa(os.Getpid())
	if err := f.Set("self=" + pid); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"self", "=1", "self=x"} {
		if err := f.Set(bad); err == nil {
			t.Errorf("--cpu %q accepted", bad)
		}
	}
	m := &cpuMeter{procs: f}
	done := m.run(time.Now(), time.Time{})
	time.Sleep(10 * time.Millisecond) // the first sample is taken
	x := 0
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		x++
	}
	used, err := done()
	if err != nil {
		t.Fatal(err)
	}
	if used["self"] < 0.1 {
		t.Fatalf("spinning 300 ms counted %.3f s of CPU (x=%d)", used["self"], x)
	}
}
