package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestUsageNamesCommandFlags: the top-level usage names every flag that
// `llmproxy logs`, `llmproxy config check` and `llmproxy webhooks dlq`
// document.
func TestUsageNamesCommandFlags(t *testing.T) {
	lines := strings.Split(webhooksUsage, "\n")
	for _, cmd := range []struct{ line, usage string }{
		{"llmproxy logs ", logsUsage},
		{"llmproxy config check ", configUsage},
		{"llmproxy webhooks dlq list ", lines[0]},
		{"llmproxy webhooks dlq replay ", lines[1]},
		{"llmproxy webhooks dlq discard ", lines[2]},
	} {
		var line string
		for l := range strings.SplitSeq(usageText, "\n") {
			if strings.Contains(l, cmd.line) {
				line = l
			}
		}
		for _, f := range regexp.MustCompile(`--[a-z-]+`).FindAllString(cmd.usage, -1) {
			if !regexp.MustCompile(regexp.QuoteMeta(f) + `([^a-z-]|$)`).MatchString(line) {
				t.Errorf("usage line %q lacks %s", line, f)
			}
		}
	}
}

func TestConfigCommandArguments(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("backends: [{url: http://127.0.0.1:9000}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args       []string
		code       int
		stdout     string // a substring; "" for none
		stderrSays string
	}{
		{[]string{"check", "--help"}, 0, "Usage:\n  llmproxy config check [--target T] FILE", ""},
		{[]string{"check", "-h"}, 0, "Usage:", ""},
		{[]string{"--help"}, 0, "Usage:", ""},
		{[]string{"check", good}, 0, good + ": ok", ""},
		{[]string{"check"}, 2, "", "Usage:"},
		{[]string{"check", good, "extra"}, 2, "", "unexpected argument \"extra\": it checks one file"},
		{[]string{"check", "--strict", good}, 2, "", "flag provided but not defined: -strict"},
		{[]string{"verify", good}, 2, "", "llmproxy config: unknown command \"verify\""},
		{[]string{"check", filepath.Join(dir, "missing.yaml")}, 1, "", "missing.yaml"},
		{[]string{"check", "--target", "all", good}, 0, good + ": ok", ""},
		{[]string{"check", good, "--target", "notifier"}, 1, "", "--target notifier needs nats.url"},
		{[]string{"check", "--target", "gateway", good}, 1, "", "--target gateway needs redis.url"},
		{[]string{"check", "--target", "proxy", good}, 2, "", `--target "proxy": want all, gateway`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := runConfig(tt.args, &out, &errOut); code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tt.stdout) || (tt.stdout == "" && out.Len() > 0) {
				t.Errorf("stdout %q, want %q", out.String(), tt.stdout)
			}
			if !strings.Contains(errOut.String(), tt.stderrSays) {
				t.Errorf("stderr %q, want it to say %q", errOut.String(), tt.stderrSays)
			}
		})
	}
}

// TestKeysUnexpectedArguments: an argument no keys command takes is a
// usage error, found before the config is read.
func TestKeysUnexpectedArguments(t *testing.T) {
	for _, args := range [][]string{
		{"list", "--config", "F", "extra"},
		{"create", "--config", "F", "extra"},
		{"show", "alice", "--config", "F", "extra"},
		{"show", "--config", "F", "alice", "extra"},
		{"delete", "--config", "F", "alice", "--json", "bob"},
	} {
		_, errOut := runKeysCmd(t, 2, args...)
		if !strings.Contains(errOut, "unexpected argument") {
			t.Errorf("keys %v: stderr %q", args, errOut)
		}
	}
}

// runArgsEnv carries, JSON-encoded, the arguments TestRunSelf runs the
// command with in a child process.
const runArgsEnv = "LLMPROXY_TEST_RUN_ARGS"

// TestRunSelf is the child process of runSelf: with runArgsEnv set it runs
// the command and exits with its code; otherwise it does nothing.
func TestRunSelf(t *testing.T) {
	s := os.Getenv(runArgsEnv)
	if s == "" {
		return
	}
	var args []string
	if err := json.Unmarshal([]byte(s), &args); err != nil {
		t.Fatal(err)
	}
	os.Exit(run(args))
}

// runSelf runs `llmproxy args…` in a child process (this test binary), so
// that everything written to the process's stdout and stderr is seen, a
// library's own writes to os.Stderr included, and returns its exit code
// and output.
func runSelf(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	enc, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRunSelf$")
	cmd.Env = append(os.Environ(), runArgsEnv+"="+string(enc))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

// TestCommandsRedisDownSayOneLine: `keys` and `usage` with a Redis that
// does not answer exit 1 with their own one-line error, without go-redis's
// lines about each failed dial before it.
func TestCommandsRedisDownSayOneLine(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	path := filepath.Join(t.TempDir(), "llmproxy.yaml")
	cfg := "backends: [{url: http://127.0.0.1:9}]\nauth: {storage: redis}\nredis: {url: redis://" + addr + "/15}\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"keys", "list", "--config", path},
		{"keys", "create", "--config", path},
		{"usage", "--config", path},
	} {
		code, _, stderr := runSelf(t, args...)
		if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "connection refused") {
			t.Errorf("llmproxy %s = %d, stderr:\n%s\nwant 1 and one line saying why", strings.Join(args[:2], " "), code, stderr)
		}
	}
}

// TestCommandHelpAndBadFlags: every command's -h/--help prints its flags to
// stdout and exits 0; a flag it does not have is one line on stderr and
// exit 2, before any config is read.
func TestCommandHelpAndBadFlags(t *testing.T) {
	for _, cmd := range [][]string{
		{"serve"}, {"usage"}, {"logs"}, {"keys", "create"}, {"keys", "list"}, {"keys", "show"},
		{"keys", "delete", "alice"}, {"webhooks", "dlq", "list"}, {"webhooks", "dlq", "replay"},
	} {
		name := strings.Join(cmd, " ")
		if name == "keys delete alice" {
			name = "keys delete"
		}
		t.Run(name, func(t *testing.T) {
			for _, h := range []string{"-h", "--help"} {
				code, stdout, stderr := runSelf(t, append(cmd, h)...)
				if code != 0 || !strings.HasPrefix(stdout, "Usage of llmproxy "+name+":\n") || !strings.Contains(stdout, "-config") || stderr != "" {
					t.Errorf("%s %s = %d\nstdout: %s\nstderr: %s\nwant 0 and the flags on stdout", name, h, code, stdout, stderr)
				}
			}
			code, stdout, stderr := runSelf(t, append(cmd, "--bogus")...)
			want := "llmproxy " + name + ": flag provided but not defined: -bogus (see llmproxy " + name + " --help)\n"
			if code != 2 || stdout != "" || stderr != want {
				t.Errorf("%s --bogus = %d\nstdout: %s\nstderr: %q\nwant 2 and %q", name, code, stdout, stderr, want)
			}
		})
	}
	for _, args := range [][]string{{"webhooks", "--help"}, {"webhooks", "dlq", "-h"}} {
		if code, stdout, stderr := runSelf(t, args...); code != 0 || !strings.Contains(stdout, "webhooks dlq list --config") || !strings.Contains(stdout, "webhooks dlq replay --config") || stderr != "" {
			t.Errorf("%v = %d, %q, %q; want 0 and the usage on stdout", args, code, stdout, stderr)
		}
	}
}

// TestCommandsRefuseStrayArguments: an argument serve, usage or webhooks
// dlq does not take (a forgotten --key before an id, a second target) is a
// one-line usage error, exit 2, not silently ignored.
func TestCommandsRefuseStrayArguments(t *testing.T) {
	for _, args := range [][]string{
		{"usage", "--config", "F", "team-a"},
		{"serve", "--config", "F", "--target", "gateway", "meter"},
		{"webhooks", "dlq", "replay", "--config", "F", "ev-1"},
	} {
		code, stdout, stderr := runSelf(t, args...)
		if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "unexpected argument \""+args[len(args)-1]+"\"") {
			t.Errorf("%v = %d, %q, %q; want 2 and one line naming the argument", args, code, stdout, stderr)
		}
	}
}

// TestCommandsRefuseFlagsThatDoNotFit: flags that the command would ignore
// or read one of two ways are refused with a line saying why, before
// anything is read or changed: --all with a filter or outside discard, a
// --limit that shows nothing.
func TestCommandsRefuseFlagsThatDoNotFit(t *testing.T) {
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"webhooks", "dlq", "discard", "--config", "F", "--id", "3", "--all"}, "--all discards every dead letter; give it without --id or --endpoint"},
		{[]string{"webhooks", "dlq", "discard", "--config", "F", "--endpoint", "audit", "--all"}, "--all discards every dead letter"},
		{[]string{"webhooks", "dlq", "replay", "--config", "F", "--all"}, "flag provided but not defined: -all"},
		{[]string{"webhooks", "dlq", "list", "--config", "F", "--all"}, "flag provided but not defined: -all"},
		{[]string{"webhooks", "dlq", "replay", "--config", "F", "--json"}, "flag provided but not defined: -json"},
		{[]string{"webhooks", "dlq", "discard", "--config", "F", "--all", "--json"}, "flag provided but not defined: -json"},
		{[]string{"logs", "--config", "F", "--limit", "0"}, "--limit"},
		{[]string{"logs", "--config", "F", "--limit", "-1"}, "--limit"},
		{[]string{"logs", "--config", "F", "--since=-5m"}, "--since: \"-5m\": give how far back without a sign"},
		{[]string{"logs", "--config", "F", "--since=-7d"}, "--since: \"-7d\": give how far back without a sign"},
		{[]string{"logs", "--config", "F", "--since", "7x"}, "is neither a duration"},
		{[]string{"logs", "--config", "F", "--status", "999"}, "--status: want an HTTP status"},
		{[]string{"logs", "--config", "F", "--status", "-1"}, "--status: want an HTTP status"},
	} {
		code, stdout, stderr := runSelf(t, c.args...)
		if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.says) {
			t.Errorf("%v = %d, %q, %q; want 2 and one line saying %q", c.args, code, stdout, stderr, c.says)
		}
	}
}

// TestServeChecksAdminListen: an --admin-listen that is no address, or that
// would take the port of a listener the target runs, is refused before
// anything starts.
func TestServeChecksAdminListen(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("listen: \"127.0.0.1:19471\"\nbackends: [{url: http://127.0.0.1:9000}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"serve", "--config", cfg, "--admin-listen", "bogus"}, 2, `--admin-listen: want host:port such as :8000 or 127.0.0.1:8000, got "bogus"`},
		{[]string{"serve", "--config", cfg, "--admin-listen", ":19471"}, 1, `--admin-listen ":19471" takes the port of listen ("127.0.0.1:19471")`},
	} {
		code, stdout, stderr := runSelf(t, c.args...)
		if code != c.code || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.says) {
			t.Errorf("%v = %d, %q, %q; want %d and one line saying %q", c.args, code, stdout, stderr, c.code, c.says)
		}
	}
}
