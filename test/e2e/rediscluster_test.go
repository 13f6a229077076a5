package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisCluster starts a real three-node Redis Cluster (redis-server in
// cluster mode, every slot on a master, no replicas) on free ports for the
// test and returns its nodes' addresses. Without redis-server the test is
// skipped, or fails when CI=true.
func redisCluster(t testing.TB) []string {
	t.Helper()
	server, err := exec.LookPath("redis-server")
	if err == nil {
		_, err = exec.LookPath("redis-cli")
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server and redis-cli are required in CI: %v", err)
		}
		t.Skipf("no redis-server: %v", err)
	}
	dir := t.TempDir()
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = freeAddr(t)
		_, port, _ := net.SplitHostPort(addrs[i])
		_, bus, _ := net.SplitHostPort(freeAddr(t))
		nd := filepath.Join(dir, "node-"+port)
		if err := os.MkdirAll(nd, 0o755); err != nil {
			t.Fatal(err)
		}
		start(t, server, "--bind", "127.0.0.1", "--port", port, "--cluster-enabled", "yes", "--cluster-port", bus,
			"--cluster-config-file", filepath.Join(nd, "nodes.conf"), "--dir", nd, "--save", "", "--appendonly", "no")
	}
	ctx := context.Background()
	clients := make([]*redis.Client, len(addrs))
	for i, a := range addrs {
		clients[i] = redis.NewClient(&redis.Options{Addr: a})
		defer clients[i].Close()
		eventually(t, 10*time.Second, "redis-server on "+a, func() (bool, string) {
			err := clients[i].Ping(ctx).Err()
			return err == nil, errString(err)
		})
	}
	args := append(append([]string{"--cluster", "create"}, addrs...), "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	eventually(t, 20*time.Second, "every node of the Redis Cluster reports cluster_state:ok", func() (bool, string) {
		for i, c := range clients {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false, addrs[i] + ": " + errString(err) + " " + info
			}
		}
		return true, ""
	})
	return addrs
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
