package e2e

// scripts/stack.sh (`make stack`) itself, run as an operator runs it: from a
// copy of the repository's layout whose `go build` links the binaries this
// package built, on ports moved by STACK_PORT_OFFSET, stopped with SIGINT to
// its process group as a terminal's Ctrl-C does.

import (
	"bufio"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stackScriptPorts are the ports scripts/stack.sh listens on, before the offset.
var stackScriptPorts = []int{4222, 4223, 4224, 6222, 6223, 6224, 8222, 8223, 8224, 9000, 8000, 8001, 8002, 8003, 8011, 8012, 8021}

// stackScript is one run of scripts/stack.sh.
type stackScript struct {
	root string // the copy of the repository the script runs in
	dir  string // STACK_DIR
	off  int    // STACK_PORT_OFFSET
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

func (s *stackScript) addr(port int) string {
	return "127.0.0.1:" + strconv.Itoa(port+s.off)
}

// startStackScript runs the script (newStackScript) and waits until it says
// the stack is up.
func startStackScript(t *testing.T) *stackScript {
	t.Helper()
	s := newStackScript(t, stackScriptOffset(t))
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
		for pid := range s.procs(t) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("--- output of scripts/stack.sh:\n%s", tail(s.out.String(), 6000))
			for _, name := range []string{"gateway-1", "gateway-2", "meter-1", "meter-2", "notifier", "nats-n1", "nats-n2", "nats-n3"} {
				b, _ := os.ReadFile(filepath.Join(s.dir, "logs", name+".log"))
				t.Logf("--- %s.log:\n%s", name, tail(string(b), 3000))
			}
		}
	})
	eventually(t, 90*time.Second, "stack up", func() (bool, string) {
		select {
		case <-s.done:
			t.Fatalf("scripts/stack.sh exited (%v) before the stack was up", s.cmd.ProcessState)
		default:
		}
		return strings.Contains(s.out.String(), "LLMProxy stack is up"), "waiting for the script"
	})
	return s
}

// newStackScript lays out scripts/stack.sh, deploy/nats/cluster and a `go`
// that links the built binaries into bin/ in a temporary directory, and
// prepares the script's command, against the test Redis, on ports moved by
// off.
func newStackScript(t *testing.T, off int) *stackScript {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("finds the stack's processes through /proc")
	}
	rurl, prefix := redisPrefix(t, "stackscript")
	ru, err := url.Parse(rurl)
	if err != nil {
		t.Fatal(err)
	}
	if ru.Host != "127.0.0.1:6379" {
		t.Skipf("scripts/stack.sh uses the Redis at 127.0.0.1:6379, the test's is %s", ru.Host)
	}
	db := strings.TrimPrefix(ru.Path, "/")
	if db == "" {
		db = "0"
	}
	stackNatsdBin(t)

	repo := repoRoot(t)
	root := t.TempDir()
	for _, f := range []string{"scripts/stack.sh", "deploy/nats/cluster/n1.conf", "deploy/nats/cluster/n2.conf", "deploy/nats/cluster/n3.conf"} {
		b, err := os.ReadFile(filepath.Join(repo, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(root, f), string(b))
	}
	if err := os.MkdirAll(filepath.Join(root, "cmd"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The script runs `$GO build -o ../bin/NAME ./NAME` in cmd/.
	gostub := filepath.Join(root, "go-stub")
	writeFile(t, gostub, fmt.Sprintf("#!/bin/sh\nmkdir -p \"$(dirname \"$3\")\" && ln -sf %q/\"$(basename \"$4\")\" \"$3\"\n", binDir))
	if err := os.Chmod(gostub, 0o755); err != nil {
		t.Fatal(err)
	}

	s := &stackScript{root: root, dir: filepath.Join(root, "data", "stack"), off: off, out: &syncBuffer{}, done: make(chan struct{})}
	s.cmd = exec.Command("bash", filepath.Join(root, "scripts", "stack.sh"))
	s.cmd.Env = append(os.Environ(),
		"GO="+gostub,
		"STACK_DIR="+s.dir,
		"STACK_PORT_OFFSET="+strconv.Itoa(s.off),
		"STACK_REDIS_DB="+db,
		"STACK_REDIS_PREFIX="+prefix,
	)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	// A process group of its own, as a shell gives a foreground job: SIGINT
	// to the group is Ctrl-C in a terminal.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return s
}

// stackScriptOffset picks a STACK_PORT_OFFSET under which every port of the
// stack is free, and below the kernel's range of ephemeral ports: a port in
// it that is free when checked can be taken by any process's outgoing
// connection before the script binds it (mockllm once failed so).
func stackScriptOffset(t *testing.T) int {
	t.Helper()
	low := 32768 // Linux's default start of ip_local_port_range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	top := slices.Max(stackScriptPorts)
	span := (low - 1 - top - 10000) / 10
	if span < 1 {
		t.Skipf("no room for the stack's ports below the ephemeral range (%d)", low)
	}
	for try := 0; try < 50; try++ {
		off := 10000 + rand.Intn(span)*10
		free := true
		for _, p := range stackScriptPorts {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+off))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return off
		}
	}
	t.Fatal("no port offset with every port of the stack free")
	return 0
}

// procs returns the command lines of the running processes whose working
// directory is the script's root: the script's children.
func (s *stackScript) procs(t *testing.T) map[int]string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	found := map[int]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == s.cmd.Process.Pid {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || cwd != s.root {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		found[pid] = strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")
	}
	return found
}

// interrupt sends SIGINT to the script's process group, as Ctrl-C does, and
// waits for the script to exit.
func (s *stackScript) interrupt(t *testing.T) int {
	t.Helper()
	if err := syscall.Kill(-s.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	case <-time.After(90 * time.Second):
		t.Fatal("scripts/stack.sh still running 90 s after Ctrl-C")
	}
	return s.cmd.ProcessState.ExitCode()
}

func TestStackScriptCtrlCStopsInOrder(t *testing.T) {
	s := startStackScript(t)
	gw := "http://" + s.addr(8000)

	// A stream open when Ctrl-C comes: gateway-1 lets it finish and must
	// still have NATS to publish its event to.
	req, err := http.NewRequest("POST", gw+"/v1/chat/completions", strings.NewReader(
		`{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"Hello"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer sk-llmproxy-demo-123")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stream: status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("first event of the stream: %v", err)
	}

	exited := make(chan int, 1)
	go func() { exited <- s.interrupt(t) }()
	var rest strings.Builder
	if _, err := br.WriteTo(&rest); err != nil {
		t.Fatalf("stream cut by Ctrl-C: %v (read %q)", err, rest.String())
	}
	if !strings.Contains(rest.String(), "data: [DONE]") {
		t.Fatalf("stream ended without [DONE]: %q", rest.String())
	}
	if code := <-exited; code != 0 {
		t.Fatalf("scripts/stack.sh exited with %d after Ctrl-C, want 0", code)
	}
	if left := s.procs(t); len(left) > 0 {
		t.Fatalf("processes of the stack still running after it stopped: %v", left)
	}
	for _, gwName := range []string{"gateway-1", "gateway-2"} {
		b, err := os.ReadFile(filepath.Join(s.dir, "logs", gwName+".log"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "unpublished events") {
			t.Fatalf("%s stopped with events it could not publish (NATS stopped before it):\n%s", gwName, tail(string(b), 2000))
		}
	}
}

// pidOf returns the pid of the stack's one process whose command line
// contains part.
func (s *stackScript) pidOf(t *testing.T, part string) int {
	t.Helper()
	var found []int
	for pid, cmdline := range s.procs(t) {
		if strings.Contains(cmdline, part) {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d processes of the stack with %q in their command line, want 1: %v", len(found), part, s.procs(t))
	}
	return found[0]
}

func TestStackScriptSurvivesKilledNodeAndMeter(t *testing.T) {
	s := startStackScript(t)
	cfg := filepath.Join(s.dir, "llmproxy.yaml")
	mock := "http://" + s.addr(9000)
	const key = "sk-llmproxy-demo-123"

	// One client per gateway while a NATS node and a meter are killed;
	// mixedLoad fails the test on any client error.
	const perClient = 24
	results := make([]tokens, 2)
	counts := make([]int64, 2)
	var wg sync.WaitGroup
	for i, gw := range []string{"http://" + s.addr(8000), "http://" + s.addr(8002)} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, ids := mixedLoad(t, gw, mock, key, fmt.Sprintf("script-%d", i), perClient)
			results[i], counts[i] = w, int64(len(ids))
		}()
	}
	eventually(t, 60*time.Second, "load under way", func() (bool, string) {
		rows, err := usageOf(t, cfg)
		return err == nil && rows["demo"].Requests >= 4, fmt.Sprintf("%+v %v", rows["demo"], err)
	})
	// The LLMPROXY stream's leader is the worst node to lose.
	leader, replicas, _, err := stackStreamInfo(s.addr(8222))
	if err != nil || replicas != 3 {
		t.Fatalf("LLMPROXY stream: leader %q, %d replicas, err %v", leader, replicas, err)
	}
	node := s.pidOf(t, "deploy/nats/cluster/"+leader+".conf")
	meter := s.pidOf(t, "--admin-listen "+s.addr(8011))
	for _, pid := range []int{node, meter} {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("SIGKILLed NATS node %s (stream leader, pid %d) and meter-1 (pid %d)", leader, node, meter)
	wg.Wait()

	want := tokens{prompt: results[0].prompt + results[1].prompt, completion: results[0].completion + results[1].completion}
	waitLedger(t, cfg, map[string]tokens{"demo": want}, map[string]int64{"demo": counts[0] + counts[1]})
	select {
	case <-s.done:
		t.Fatalf("scripts/stack.sh exited (%v) when one NATS node and one meter were killed", s.cmd.ProcessState)
	default:
	}
	for _, name := range []string{"nats-" + leader, "meter-1"} {
		if !strings.Contains(s.out.String(), fmt.Sprintf("%s (pid ", name)) {
			t.Errorf("the script did not report that %s exited", name)
		}
	}
	if code := s.interrupt(t); code != 0 {
		t.Fatalf("scripts/stack.sh exited with %d after Ctrl-C, want 0", code)
	}
	if left := s.procs(t); len(left) > 0 {
		t.Fatalf("processes of the stack still running after it stopped: %v", left)
	}
}

func TestStackScriptPortInUse(t *testing.T) {
	off := stackScriptOffset(t)
	s := newStackScript(t, off)
	ln, err := net.Listen("tcp", s.addr(8002))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = s.cmd.Run()
	out := s.out.String()
	if s.cmd.ProcessState == nil || s.cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("scripts/stack.sh with a port in use: %v, want exit status 1; output:\n%s", err, out)
	}
	if !strings.Contains(out, "port "+s.addr(8002)+" is in use") {
		t.Fatalf("output does not name the port in use:\n%s", out)
	}
	// Nothing was started, so nothing is built, stopped or kept.
	for _, unwanted := range []string{"building", "stopping", "state kept"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("output says %q although nothing was started:\n%s", unwanted, out)
		}
	}
	if _, err := os.Stat(s.dir); !os.IsNotExist(err) {
		t.Errorf("%s created although nothing was started (stat: %v)", s.dir, err)
	}
}
