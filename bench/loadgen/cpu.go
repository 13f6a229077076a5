package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// cpuFlags collects repeated --cpu NAME=PID flags: the processes whose CPU
// time a request-mode run reports, per name (several PIDs may share one).
type cpuFlags [][2]string

func (f *cpuFlags) String() string { return fmt.Sprint(*f) }

func (f *cpuFlags) Set(s string) error {
	name, pid, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("cpu %q: want NAME=PID", s)
	}
	if _, err := strconv.Atoi(pid); err != nil {
		return fmt.Errorf("cpu %q: PID: %w", s, err)
	}
	*f = append(*f, [2]string{name, pid})
	return nil
}

// userHZ is the unit of utime and stime in /proc/PID/stat on Linux.
const userHZ = 100

// cpuSeconds reads the user plus system CPU time a process has used.
func cpuSeconds(pid string) (float64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	// The command name may hold spaces; the fields after it do not.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%s/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%s/stat: %d fields", pid, len(f))
	}
	// After the name: state(0) ... utime(11) stime(12).
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%s/stat: bad utime/stime", pid)
	}
	return float64(u+st) / userHZ, nil
}

// cpuMeter samples the named processes' CPU time at the start and the end
// of the measured window.
type cpuMeter struct {
	procs cpuFlags
	start map[string]float64
	err   error
}

func (m *cpuMeter) sample() map[string]float64 {
	out := map[string]float64{}
	for _, p := range m.procs {
		s, err := cpuSeconds(p[1])
		if err != nil && m.err == nil {
			m.err = err
		}
		out[p[0]] += s
	}
	return out
}

// run takes the first sample at start and the second at end (or, with a
// zero end, when the returned function is called), and returns a function
// that gives the CPU seconds used in between, by name.
//
// With any process named, the load generator's own CPU time is reported too,
// as "loadgen", so that a run can account for the whole loop.
func (m *cpuMeter) run(start, end time.Time) func() (map[string]float64, error) {
	if len(m.procs) == 0 {
		return func() (map[string]float64, error) { return nil, nil }
	}
	m.procs = append(m.procs, [2]string{"loadgen", strconv.Itoa(os.Getpid())})
	var last map[string]float64
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(time.Until(start))
		m.start = m.sample()
		if !end.IsZero() {
			time.Sleep(time.Until(end))
			last = m.sample()
		}
	}()
	return func() (map[string]float64, error) {
		<-done
		if last == nil {
			last = m.sample()
		}
		used := map[string]float64{}
		for name, s := range last {
			used[name] = s - m.start[name]
		}
		return used, m.err
	}
}
