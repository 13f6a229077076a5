package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	c.configure(t, fmt.Sprintf("{ sentinel: { master_name: %s, addrs: [%q] }, prefix: %q }", sentinelMaster, sentinel, c.prefix), "")
	kRPM := limCreateKey(t, c.cfgA, "--id", "rpm", "--name", "rpm", "--rpm", "300")
	kConc := limCreateKey(t, c.cfgA, "--id", "conc", "--name", "conc", "--max-concurrent", "3")
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
