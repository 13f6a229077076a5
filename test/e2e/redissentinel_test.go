package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// sentinelMaster is the master name the test's sentinel watches.
const sentinelMaster = "llmproxy-e2e"

// redisSentinel starts a real Redis master, a replica of it and a sentinel
// watching them (redis-server, and redis-server --sentinel) on free ports
// for the test, and returns the master's, the replica's and the sentinel's
// addresses. Without redis-server the test is skipped, or fails when
// CI=true.
func redisSentinel(t testing.TB) (master, replica, sentinel string) {
	t.Helper()
	server, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is required in CI: %v", err)
		}
		t.Skipf("no redis-server: %v", err)
	}
	dir := t.TempDir()
	master, replica, sentinel = freeAddr(t), freeAddr(t), freeAddr(t)
	port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	node := func(addr string, extra ...string) {
		nd := filepath.Join(dir, "node-"+port(addr))
		if err := os.MkdirAll(nd, 0o755); err != nil {
			t.Fatal(err)
		}
		start(t, server, append([]string{"--bind", "127.0.0.1", "--port", port(addr), "--dir", nd, "--save", "", "--appendonly", "no"}, extra...)...)
	}
	node(master)
	node(replica, "--replicaof", "127.0.0.1", port(master))
	// The sentinel rewrites its config file: one of its own.
	conf := filepath.Join(dir, "sentinel.conf")
	writeFile(t, conf, fmt.Sprintf("bind 127.0.0.1\nport %s\ndir %s\nsentinel monitor %s 127.0.0.1 %s 1\n"+
		"sentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 10000\n",
		port(sentinel), dir, sentinelMaster, port(master), sentinelMaster, sentinelMaster))
	start(t, server, conf, "--sentinel")

	ctx := context.Background()
	rep := redis.NewClient(&redis.Options{Addr: replica})
	defer rep.Close()
	eventually(t, 20*time.Second, "the replica in sync with the master", func() (bool, string) {
		info, err := rep.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up"), errString(err) + info
	})
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel})
	defer sc.Close()
	eventually(t, 20*time.Second, "the sentinel watching the master and its replica", func() (bool, string) {
		replicas, err := sc.Replicas(ctx, sentinelMaster).Result()
		return err == nil && len(replicas) == 1, fmt.Sprint(errString(err), replicas)
	})
	return master, replica, sentinel
}

// TestLimitsOnRedisSentinel runs the distributed setup (two gateways and a
// meter, keys and limits in Redis) on a master Redis Sentinel watches
// (redis.sentinel), then has the sentinel fail the master over to its
// replica: the processes follow it, and the keys and limits hold there.
func TestLimitsOnRedisSentinel(t *testing.T) {
	master, replica, sentinel := redisSentinel(t)
	c := &limCluster{prefix: "e2elim"}
	c.configure(t, fmt.Sprintf("{ sentinel: { master_name: %s, addrs: [%q] }, prefix: %q, wait_replicas: 1 }", sentinelMaster, sentinel, c.prefix), "")
	kRPM := limCreateKey(t, c.cfgA, "--id", "rpm", "--name", "rpm", "--rpm", "300")
	kConc := limCreateKey(t, c.cfgA, "--id", "conc", "--name", "conc", "--max-concurrent", "3")
	kLoad := limCreateKey(t, c.cfgA, "--id", "load", "--name", "load")
	c.run(t)

	// The keys are on the master the sentinel names.
	ctx := context.Background()
	mc := redis.NewClient(&redis.Options{Addr: master})
	defer mc.Close()
	if keys, err := mc.Keys(ctx, c.prefix+"*").Result(); err != nil || len(keys) == 0 {
		t.Fatalf("the master holds no key of the gateways' (%v): they are not on the sentinel's master", err)
	}

	t.Run("RPM", func(t *testing.T) { limRPMCase(t, c, kRPM.secret, 300) })
	t.Run("MaxConcurrent", func(t *testing.T) { limConcCase(t, c, kConc.secret, 3) })

	t.Run("Failover", func(t *testing.T) {
		// Requests of two keys, one at its concurrency limit, run through
		// the failover: every one served is counted once in the usage
		// (wait_replicas: the meter acknowledges an event only once the
		// replica has it), and every lease is released on the new master.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var served sync.Map // key secret → *atomic.Int64
		for _, k := range []string{kLoad.secret, kConc.secret} {
			served.Store(k, new(atomic.Int64))
		}
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				k, gw := kLoad.secret, c.gwA
				if i%2 == 1 {
					k, gw = kConc.secret, c.gwB
				}
				n, _ := served.Load(k)
				for {
					select {
					case <-stop:
						return
					default:
					}
					if r := limSend(gw, k, limQuickChat(), nil); r.err == nil && r.status == 200 {
						n.(*atomic.Int64).Add(1)
					} else {
						time.Sleep(10 * time.Millisecond)
					}
				}
			}()
		}
		time.Sleep(time.Second)
		sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel})
		defer sc.Close()
		if err := sc.Failover(ctx, sentinelMaster).Err(); err != nil {
			t.Fatal(err)
		}
		_, rport, _ := net.SplitHostPort(replica)
		eventually(t, 30*time.Second, "the sentinel naming the replica the master", func() (bool, string) {
			addr, err := sc.GetMasterAddrByName(ctx, sentinelMaster).Result()
			return err == nil && len(addr) == 2 && addr[1] == rport, fmt.Sprint(errString(err), addr)
		})
		time.Sleep(2 * time.Second)
		close(stop)
		wg.Wait()
		nLoad, _ := served.Load(kLoad.secret)
		nConc, _ := served.Load(kConc.secret)
		want := map[string]int64{kLoad.id: nLoad.(*atomic.Int64).Load(), kConc.id: nConc.(*atomic.Int64).Load()}
		t.Logf("served through the failover: %v", want)
		eventually(t, 60*time.Second, "the usage counting every request served through the failover once", func() (bool, string) {
			rows, err := usageOf(t, c.cfgA)
			if err != nil {
				return false, err.Error()
			}
			got := map[string]int64{kLoad.id: rows[kLoad.id].Requests, kConc.id: rows[kConc.id].Requests + 0}
			// kConc served requests before the failover too.
			return got[kLoad.id] == want[kLoad.id], fmt.Sprintf("usage %v, served %v", got, want)
		})
		// No lease of kConc's is left held: its three slots are free.
		limConcCase(t, c, kConc.secret, 3)
		// A key made after the failover, written to the new master, is
		// served by both gateways, and its limit holds there.
		kAfter := limCreateKey(t, c.cfgB, "--id", "after", "--name", "after", "--max-concurrent", "2")
		rc := redis.NewClient(&redis.Options{Addr: replica})
		defer rc.Close()
		if role, err := rc.Do(ctx, "ROLE").Slice(); err != nil || len(role) == 0 || role[0] != "master" {
			t.Fatalf("the former replica's role: %v, %v", role, err)
		}
		eventually(t, 30*time.Second, "both gateways serving the keys on the new master", func() (bool, string) {
			for _, gw := range []string{c.gwA, c.gwB} {
				for _, k := range []string{kAfter.secret, kConc.secret} {
					if r := limSend(gw, k, limQuickChat(), nil); r.status != 200 {
						return false, fmt.Sprintf("%s: %d %s %v", gw, r.status, r.body, r.err)
					}
				}
			}
			return true, ""
		})
		limConcCase(t, c, kAfter.secret, 2)
	})
}
