package ledger

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// replicatedRedis starts a Redis master and a replica of it (redis-server
// on free ports, the test's own) and returns clients of both. Without
// redis-server the test is skipped, or fails when CI=true.
func replicatedRedis(t *testing.T) (master, replica *redis.Client) {
	t.Helper()
	master, replica, _ = replicatedRedisProcess(t)
	return master, replica
}

// replicatedRedisProcess is replicatedRedis, with the replica's process.
// LLMPROXY_TEST_REDIS_SERVER names the server to run instead of
// redis-server (a Valkey, or a Redis of another version).
func replicatedRedisProcess(t *testing.T) (master, replica *redis.Client, replicaProcess *os.Process) {
	t.Helper()
	server := os.Getenv("LLMPROXY_TEST_REDIS_SERVER")
	if server == "" {
		var err error
		if server, err = exec.LookPath("redis-server"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("redis-server is required in CI: %v", err)
			}
			t.Skipf("no redis-server: %v", err)
		}
	}
	var last *exec.Cmd
	port := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	}
	start := func(p string, extra ...string) *redis.Client {
		cmd := exec.Command(server, append([]string{"--bind", "127.0.0.1", "--port", p, "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", t.TempDir()}, extra...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + p})
		t.Cleanup(func() { c.Close() })
		last = cmd
		return c
	}
	mp := port()
	master = start(mp)
	replica = start(port(), "--replicaof", "127.0.0.1", mp)
	waitLinked(t, master, replica)
	return master, replica, last.Process
}

// waitLinked waits until replica is in sync with master, as each of them
// sees it.
func waitLinked(t *testing.T, master, replica *redis.Client) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := replica.Info(ctx, "replication").Result()
		m, merr := master.Info(ctx, "replication").Result()
		if err == nil && merr == nil && strings.Contains(r, "master_link_status:up") && strings.Contains(m, "state=online") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica never linked: %v %v\n%s\n%s", err, merr, r, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestApplyWaitsForReplicas: with WithWaitReplicas an Apply succeeds only
// once a replica has its writes; with none to have them it fails with
// ErrNotReplicated within its timeout, and the same entries applied again
// once the replica is back are counted once.
func TestApplyWaitsForReplicas(t *testing.T) {
	ctx := context.Background()
	master, replica := replicatedRedis(t)
	// A replica that has just linked may answer a first WAIT only with
	// its next acknowledgement, within a second.
	s := NewRedis(master, "llmproxy-test", WithWaitReplicas(1, 2*time.Second))
	at := time.Now()
	e1 := Entry{RequestID: "r1", KeyID: "k", Time: at, PromptTokens: 3, CompletionTokens: 4}
	if n, err := s.Apply(ctx, []Entry{e1}); err != nil || n != 1 {
		t.Fatalf("Apply with the replica up = %d, %v", n, err)
	}
	if u, err := NewRedis(replica, "llmproxy-test").Usage(ctx, "k", Daily, at); err != nil || u.TotalTokens != 7 {
		t.Fatalf("the replica has usage %+v, %v once Apply returned; want 7 tokens", u, err)
	}

	// The replica leaves: nothing has the writes but the master.
	if err := replica.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	e2 := Entry{RequestID: "r2", KeyID: "k", Time: at, PromptTokens: 10}
	start := time.Now()
	short := NewRedis(master, "llmproxy-test", WithWaitReplicas(1, 300*time.Millisecond))
	if _, err := short.Apply(ctx, []Entry{e2}); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("Apply with no replica = %v, want ErrNotReplicated", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the failed Apply took %s, want about its 300ms timeout", d)
	}

	// Back (it resyncs from the master): applied again, counted once.
	mport := strings.TrimPrefix(master.Options().Addr, "127.0.0.1:")
	if err := replica.Do(ctx, "REPLICAOF", "127.0.0.1", mport).Err(); err != nil {
		t.Fatal(err)
	}
	waitLinked(t, master, replica)
	if _, err := s.Apply(ctx, []Entry{e2}); err != nil {
		t.Fatalf("Apply again with the replica back: %v", err)
	}
	if u, err := s.Usage(ctx, "k", Daily, at); err != nil || u.TotalTokens != 17 || u.Requests != 2 {
		t.Fatalf("usage %+v, %v; want 17 tokens of 2 requests, each counted once", u, err)
	}
}

// TestAppliedAgainWaitsOnAnyConnection: an Apply sent again whose entries
// the master has already (its first sending's WAIT fell short) writes
// nothing of its own; on a connection that wrote nothing before (or only
// long ago) its WAIT still waits for a replica to have those entries.
// Since Redis 7.2, and in Valkey, WAIT measures the last write of its
// connection that changed something: without a write of the Apply's own
// it answered at once with every replica linked, and the meter
// acknowledged usage the stopped replica did not have.
// (LLMPROXY_TEST_REDIS_SERVER runs it on such a server; Redis 7.0 counts
// any command.)
func TestAppliedAgainWaitsOnAnyConnection(t *testing.T) {
	ctx := context.Background()
	master, replica, proc := replicatedRedisProcess(t)
	at := time.Now()
	e := Entry{RequestID: "r1", KeyID: "k", Time: at, PromptTokens: 3, CompletionTokens: 4}
	// The replica stops taking the master's writes, linked still.
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer proc.Signal(syscall.SIGCONT)
	first := NewRedis(master, "llmproxy-test", WithWaitReplicas(1, 300*time.Millisecond))
	if _, err := first.Apply(ctx, []Entry{e}); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("Apply with the replica stopped = %v, want ErrNotReplicated", err)
	}
	fresh := redis.NewClient(&redis.Options{Addr: master.Options().Addr})
	defer fresh.Close()
	again := NewRedis(fresh, "llmproxy-test", WithWaitReplicas(1, 300*time.Millisecond))
	if n, err := again.Apply(ctx, []Entry{e}); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("the same Apply again, on a new connection, with the replica stopped = %d, %v; want ErrNotReplicated", n, err)
	}
	if err := proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// A replica that has just woken may answer only with its next
	// acknowledgement, within a second.
	patient := NewRedis(fresh, "llmproxy-test", WithWaitReplicas(1, 2*time.Second))
	if _, err := patient.Apply(ctx, []Entry{e}); err != nil {
		t.Fatalf("Apply again with the replica going on: %v", err)
	}
	if u, err := NewRedis(replica, "llmproxy-test").Usage(ctx, "k", Daily, at); err != nil || u.TotalTokens != 7 || u.Requests != 1 {
		t.Fatalf("the replica has usage %+v, %v; want 7 tokens of 1 request", u, err)
	}
}

// TestReleaseWaitsForReplicas: with WithWaitReplicas a lease's release is
// done on the master at once and sent again in the background until a
// replica has it (a release lost in a failover would hold the slot until
// its TTL); nothing on the request's path waits for the replicas, not even
// while there are none: neither the release nor the admissions sharing its
// pipeline.
func TestReleaseWaitsForReplicas(t *testing.T) {
	ctx := context.Background()
	master, replica := replicatedRedis(t)
	a := NewRedisAdmitter(master, "llmproxy-test", WithWaitReplicas(1, time.Second))
	req := AdmitRequest{KeyID: "k", LeaseID: "r1", Limits: KeyLimits{MaxConcurrent: 1}, LeaseTTL: time.Hour}
	if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
		t.Fatalf("Admit = %+v, %v", d, err)
	}
	if err := a.Release(ctx, "k", "r1"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	a.cancels.wait()
	if n, _ := replica.ZCard(ctx, "llmproxy-test:{k}:rl:leases").Result(); n != 0 {
		t.Fatalf("the replica holds %d leases once the release was confirmed", n)
	}

	// The replica leaves: releases and admissions go on at once.
	if err := replica.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("b%d-%d", w, i)
				r := AdmitRequest{KeyID: "busy", LeaseID: id, Limits: KeyLimits{MaxConcurrent: 100}, LeaseTTL: time.Minute}
				if d, err := a.Admit(ctx, r); err == nil && d.Allowed {
					if err := a.Release(ctx, "busy", id); err != nil {
						t.Errorf("Release with no replica: %v", err)
					}
				}
			}
		}()
	}
	var worst time.Duration
	for i := range 20 {
		start := time.Now()
		r := AdmitRequest{KeyID: "free", LeaseID: fmt.Sprintf("f%d", i), LeaseTTL: time.Minute}
		if d, err := a.Admit(ctx, r); err != nil || !d.Allowed {
			t.Fatalf("Admit = %+v, %v", d, err)
		}
		worst = max(worst, time.Since(start))
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if worst > 300*time.Millisecond {
		t.Errorf("with no replica an admission took %s: it waited for the replicas' acknowledgement", worst)
	}
	if f := a.FollowUps(); f.Waiting == 0 {
		t.Fatalf("no release waits for a replica to confirm it: %+v", f)
	}

	// Back: every release is confirmed, none is left waiting.
	mport := strings.TrimPrefix(master.Options().Addr, "127.0.0.1:")
	if err := replica.Do(ctx, "REPLICAOF", "127.0.0.1", mport).Err(); err != nil {
		t.Fatal(err)
	}
	waitLinked(t, master, replica)
	a.cancels.wait()
	if f := a.FollowUps(); f.Waiting != 0 {
		t.Fatalf("follow-ups %+v once the replica is back", f)
	}
	if n, _ := replica.ZCard(ctx, "llmproxy-test:{busy}:rl:leases").Result(); n != 0 {
		t.Fatalf("the replica holds %d leases once the releases were confirmed", n)
	}
}

// TestWaitRefusedFailsOnlyItsCommands: a WAIT Redis refuses (an ACL user
// without it) fails the background confirmation of the releases whose
// writes it was to confirm, not the admissions or the releases themselves,
// and is not sent again for ever.
func TestWaitRefusedFailsOnlyItsCommands(t *testing.T) {
	ctx := context.Background()
	master, _ := replicatedRedis(t)
	if err := master.Do(ctx, "ACL", "SETUSER", "nowait", "on", ">pw", "~*", "&*", "+@all", "-wait").Err(); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: master.Options().Addr, Username: "nowait", Password: "pw"})
	defer rdb.Close()
	a := NewRedisAdmitter(rdb, "llmproxy-test", WithWaitReplicas(1, 300*time.Millisecond))
	var wg sync.WaitGroup
	var admitErrs, releaseErrs atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				id := fmt.Sprintf("r%d-%d", w, i)
				d, err := a.Admit(ctx, AdmitRequest{KeyID: "k", LeaseID: id, Limits: KeyLimits{MaxConcurrent: 1000, RPM: 1 << 30}, LeaseTTL: time.Minute})
				if err != nil || !d.Allowed {
					admitErrs.Add(1)
					continue
				}
				if err := a.Release(ctx, "k", id); err != nil {
					releaseErrs.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := admitErrs.Load(); n > 0 {
		t.Errorf("%d of 400 admissions failed with the WAIT beside them refused", n)
	}
	if n := releaseErrs.Load(); n > 0 {
		t.Errorf("%d releases failed: done on the master, only their confirmation is refused", n)
	}
	a.cancels.wait() // a refused WAIT is not tried again for ever
}

// TestFollowUpsBehindUnconfirmedOnesAreSent: calls queued behind a batch
// that fails every try (confirmations while no replica can have them) are
// still sent: a failed batch goes to the back of the queue.
func TestFollowUpsBehindUnconfirmedOnesAreSent(t *testing.T) {
	ctx := context.Background()
	master, replica := replicatedRedis(t)
	a := NewRedisAdmitter(master, "llmproxy-test", WithWaitReplicas(1, 100*time.Millisecond))
	if err := replica.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 * cancelBatch {
		id := fmt.Sprint("x", i)
		a.cancels.add(queued{wait: true, send: func(ctx context.Context, pipe redis.Pipeliner, _ bool) redis.Cmder {
			return pipe.ZRem(ctx, "llmproxy-test:{k}:rl:leases", id)
		}})
	}
	a.cancels.add(queued{wait: true, send: func(ctx context.Context, pipe redis.Pipeliner, _ bool) redis.Cmder {
		return pipe.Set(ctx, "llmproxy-test:behind", "sent", time.Minute)
	}})
	deadline := time.Now().Add(10 * time.Second)
	for master.Get(ctx, "llmproxy-test:behind").Val() != "sent" {
		if time.Now().After(deadline) {
			t.Fatalf("the call behind %d unconfirmed ones was never sent: %+v", 2*cancelBatch, a.FollowUps())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lonelyMaster is a master whose replica has left it, for the tests of
// what waits for replicas that are not there.
func lonelyMaster(t *testing.T) *redis.Client {
	t.Helper()
	master, replica := replicatedRedis(t)
	if err := replica.Do(context.Background(), "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	return master
}

// TestCancellationsGoBeforeConfirmations: with no replica to confirm the
// releases (queued to be confirmed with every request's end), a failed
// admission's cancellation still reaches the master at once, and is not
// crowded out of the follow-ups' cap by them.
func TestCancellationsGoBeforeConfirmations(t *testing.T) {
	ctx := context.Background()
	a := NewRedisAdmitter(lonelyMaster(t), "llmproxy-test", WithWaitReplicas(1, 200*time.Millisecond))
	a.cancels.mu.Lock()
	a.cancels.max = 300 // the cap, lowered to keep the test short
	a.cancels.mu.Unlock()
	for i := range 300 {
		id := fmt.Sprint("b", i)
		if d, err := a.Admit(ctx, AdmitRequest{KeyID: "busy", LeaseID: id, Limits: KeyLimits{MaxConcurrent: 1000}, LeaseTTL: time.Minute}); err != nil || !d.Allowed {
			t.Fatalf("Admit = %+v, %v", d, err)
		}
		if err := a.Release(ctx, "busy", id); err != nil {
			t.Fatal(err)
		}
	}
	// A request whose admission call failed though Redis ran it: Admit
	// queues its cancellation.
	req := AdmitRequest{KeyID: "k", LeaseID: "victim", Limits: KeyLimits{MaxConcurrent: 1}, LeaseTTL: time.Hour}.withDefaults()
	if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
		t.Fatalf("Admit = %+v, %v", d, err)
	}
	a.cancel(req)
	if f := a.FollowUps(); f.Dropped > 0 {
		t.Fatalf("the cancellation was dropped (follow-ups %+v) behind confirmations", f)
	}
	// The confirmations' queue is full: a release past it is done, and
	// counted as left unconfirmed.
	if err := a.Release(ctx, "busy", "past-the-cap"); err != nil {
		t.Fatal(err)
	}
	if f := a.FollowUps(); f.Unconfirmed != 1 {
		t.Fatalf("follow-ups %+v, want 1 release left unconfirmed past the cap", f)
	}
	deadline := time.Now().Add(3 * time.Second)
	for a.rdb.ZCard(ctx, "llmproxy-test:{k}:rl:leases").Val() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the cancellation did not reach the master in 3 s (follow-ups %+v)", a.FollowUps())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReleaseRefusedForWantOfReplicasIsSentAgain: a master run with
// min-replicas-to-write refuses writes with NOREPLICAS while its replicas
// are gone; a release refused so is sent again until it takes, once the
// replica is back.
func TestReleaseRefusedForWantOfReplicasIsSentAgain(t *testing.T) {
	ctx := context.Background()
	master, replica := replicatedRedis(t)
	for _, kv := range [][2]string{{"min-replicas-to-write", "1"}, {"min-replicas-max-lag", "10"}} {
		if err := master.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	a := NewRedisAdmitter(master, "llmproxy-test")
	req := AdmitRequest{KeyID: "k", LeaseID: "L1", Limits: KeyLimits{MaxConcurrent: 1}, LeaseTTL: time.Hour}
	if d, err := a.Admit(ctx, req); err != nil || !d.Allowed {
		t.Fatalf("Admit = %+v, %v", d, err)
	}
	if err := replica.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(master.Info(ctx, "replication").Val(), "connected_slaves:0") {
		if time.Now().After(deadline) {
			t.Fatal("the master still counts its replica")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := a.Release(ctx, "k", "L1"); err == nil || !strings.Contains(err.Error(), "NOREPLICAS") {
		t.Fatalf("Release with no replica = %v, want NOREPLICAS", err)
	}
	time.Sleep(time.Second)
	mport := strings.TrimPrefix(master.Options().Addr, "127.0.0.1:")
	if err := replica.Do(ctx, "REPLICAOF", "127.0.0.1", mport).Err(); err != nil {
		t.Fatal(err)
	}
	waitLinked(t, master, replica)
	deadline = time.Now().Add(10 * time.Second)
	for master.ZCard(ctx, "llmproxy-test:{k}:rl:leases").Val() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the refused release was not sent again once the replica was back (follow-ups %+v)", a.FollowUps())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
