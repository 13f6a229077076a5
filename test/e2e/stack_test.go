package e2e

// The `make stack` topology started by the test: a 3-node NATS JetStream
// cluster (cmd/natsd with deploy/nats/cluster/n1..3.conf, ports moved to
// free ones), Redis, 2 gateways, 2 meters, 1 notifier and mockllm. One NATS
// node — the LLMPROXY stream's leader — is SIGKILLed mid-run.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	stackNatsdOnce sync.Once
	stackNatsdErr  error
)

// stackNatsdBin builds cmd/natsd into binDir, once per test binary.
func stackNatsdBin(t testing.TB) {
	t.Helper()
	stackNatsdOnce.Do(func() {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, "natsd"), "github.com/llmproxy/llmproxy/cmd/natsd")
		out, err := cmd.CombinedOutput()
		if err != nil {
			stackNatsdErr = fmt.Errorf("build natsd: %v\n%s", err, out)
		}
	})
	if stackNatsdErr != nil {
		t.Fatal(stackNatsdErr)
	}
}

func stackPort(t testing.TB, addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// stackNode is one node of the test's NATS cluster.
type stackNode struct {
	name    string
	client  string // host:port
	monitor string // host:port
	p       *proc
}

// stackCluster starts the three nodes of deploy/nats/cluster on free ports,
// each with its own store under dir, and waits until JetStream is up on all.
func stackCluster(t *testing.T, dir string) []*stackNode {
	t.Helper()
	stackNatsdBin(t)
	root := repoRoot(t)
	nodes := make([]*stackNode, 3)
	clusterAddrs := make([]string, 3)
	for i := range nodes {
		nodes[i] = &stackNode{name: fmt.Sprintf("n%d", i+1), client: freeAddr(t), monitor: freeAddr(t)}
		clusterAddrs[i] = freeAddr(t)
	}
	var routes []string
	for _, a := range clusterAddrs {
		routes = append(routes, "nats-route://"+a)
	}
	for i, n := range nodes {
		n.p = start(t, "natsd",
			"-c", filepath.Join(root, "deploy", "nats", "cluster", n.name+".conf"),
			"--store-dir", filepath.Join(dir, "nats", n.name),
			"-a", "127.0.0.1", "-p", stackPort(t, n.client), "-m", stackPort(t, n.monitor),
			"--cluster", "nats://"+clusterAddrs[i], "--routes", strings.Join(routes, ","))
	}
	for _, n := range nodes {
		waitHTTP(t, "http://"+n.monitor+"/healthz?js-enabled-only=true")
	}
	return nodes
}

func stackNatsURL(nodes []*stackNode) string {
	var urls []string
	for _, n := range nodes {
		urls = append(urls, "nats://"+n.client)
	}
	return strings.Join(urls, ",")
}

// streamInfo reads the LLMPROXY stream's leader, replicas and message count
// from a node's monitoring endpoint.
func stackStreamInfo(monitor string) (leader string, replicas int, msgs uint64, err error) {
	resp, err := http.Get("http://" + monitor + "/jsz?streams=true")
	if err != nil {
		return "", 0, 0, err
	}
	defer resp.Body.Close()
	var doc struct {
		Accounts []struct {
			Streams []struct {
				Name    string `json:"name"`
				Cluster struct {
					Leader   string `json:"leader"`
					Replicas []struct {
						Name string `json:"name"`
					} `json:"replicas"`
				} `json:"cluster"`
				State struct {
					Messages uint64 `json:"messages"`
				} `json:"state"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return "", 0, 0, err
	}
	for _, a := range doc.Accounts {
		for _, s := range a.Streams {
			if s.Name == "LLMPROXY" {
				return s.Cluster.Leader, len(s.Cluster.Replicas) + 1, s.State.Messages, nil
			}
		}
	}
	return "", 0, 0, fmt.Errorf("no LLMPROXY stream on %s", monitor)
}

// stackConfig is the config of every llmproxy process of the stack; the
// gateways differ in listen and data_dir (each its own outbox).
func stackConfig(listen, dataDir, natsURL, redisURL, prefix, backend, hook string) string {
	return fmt.Sprintf(`
listen: %q
data_dir: %q
nats:
  url: %q
  stream: { replicas: 3 }
redis: { url: %q, prefix: %q }
server: { drain_timeout: 20s }
backends:
  - url: %q
    name: mockllm
usage_hook:
  url: %q
  retry: 20
auth: { enabled: true, storage: file }
api_keys:
  - key: %q
    id: alpha
    user_id: user_a
    quota_reset_period: daily
  - key: %q
    id: beta
    user_id: user_b
logging: { level: warn }
`, listen, dataDir, natsURL, redisURL, prefix, backend, hook, keyAlpha, keyBeta)
}

func TestStackNATSNodeKilled(t *testing.T) {
	rurl, prefix := redisPrefix(t, "stack")
	dir := t.TempDir()
	nodes := stackCluster(t, dir)
	natsURL := stackNatsURL(nodes)

	mock := startMock(t, "--tokens", "7", "--gap", "5ms")
	recv, hook := startReceiver(t)

	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, stackConfig("127.0.0.1:1", filepath.Join(dir, "workers"), natsURL, rurl, prefix, mock, hook.URL))
	var gws, gwAdmins []string
	for i := 1; i <= 2; i++ {
		listen := freeAddr(t)
		c := filepath.Join(dir, fmt.Sprintf("gateway-%d.yaml", i))
		writeFile(t, c, stackConfig(listen, filepath.Join(dir, fmt.Sprintf("gateway-%d", i)), natsURL, rurl, prefix, mock, hook.URL))
		admin := freeAddr(t)
		start(t, "llmproxy", "serve", "--config", c, "--target", "gateway", "--admin-listen", admin)
		gws = append(gws, "http://"+listen)
		gwAdmins = append(gwAdmins, admin)
	}
	admins := gwAdmins
	for _, target := range []string{"meter", "meter", "notifier"} {
		a := freeAddr(t)
		start(t, "llmproxy", "serve", "--config", cfg, "--target", target, "--admin-listen", a)
		admins = append(admins, a)
	}
	for _, gw := range gws {
		waitHTTP(t, gw+"/healthz")
	}
	for _, a := range admins {
		waitHTTP(t, "http://"+a+"/readyz")
	}
	eventually(t, 30*time.Second, "LLMPROXY stream on 3 replicas", func() (bool, string) {
		leader, replicas, _, err := stackStreamInfo(nodes[0].monitor)
		return err == nil && leader != "" && replicas == 3, fmt.Sprintf("leader %q replicas %d err %v", leader, replicas, err)
	})

	// Two clients per gateway; mixedLoad fails the test on any client error.
	const perClient = 36
	type result struct {
		key  string
		want tokens
		ids  []string
	}
	results := make([]result, 4)
	var wg sync.WaitGroup
	for i := range results {
		key, id := keyAlpha, "alpha"
		if i%2 == 1 {
			key, id = keyBeta, "beta"
		}
		gw := gws[i/2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, ids := mixedLoad(t, gw, mock, key, fmt.Sprintf("stack-%d", i), perClient)
			results[i] = result{id, w, ids}
		}()
	}
	eventually(t, 60*time.Second, "load under way", func() (bool, string) {
		return recv.count() >= 20, fmt.Sprintf("%d delivered", recv.count())
	})
	// Kill the stream's leader: the worst node to lose.
	leader, _, _, err := stackStreamInfo(nodes[0].monitor)
	if err != nil {
		t.Fatal(err)
	}
	var killed *stackNode
	for _, n := range nodes {
		if n.name == leader {
			killed = n
		}
	}
	if killed == nil {
		t.Fatalf("leader %q is none of the nodes", leader)
	}
	killed.p.stop(syscall.SIGKILL)
	t.Logf("SIGKILLed NATS node %s (stream leader) after %d deliveries", killed.name, recv.count())
	wg.Wait()

	want := map[string]tokens{}
	requests := map[string]int64{}
	var all []string
	for _, r := range results {
		w := want[r.key]
		w.prompt += r.want.prompt
		w.completion += r.want.completion
		want[r.key] = w
		requests[r.key] += int64(len(r.ids))
		all = append(all, r.ids...)
	}
	waitLedger(t, cfg, want, requests)
	eventually(t, 60*time.Second, "every webhook delivered", func() (bool, string) {
		return recv.count() == len(all), fmt.Sprintf("%d of %d payloads", recv.count(), len(all))
	})
	payloads := recv.snapshot()
	for _, id := range all {
		if _, ok := payloads[id]; !ok {
			t.Fatalf("no webhook for %s", id)
		}
	}
	// The surviving nodes hold every event (one per request).
	var alive *stackNode
	for _, n := range nodes {
		if n != killed {
			alive = n
		}
	}
	eventually(t, 30*time.Second, "events on the surviving nodes", func() (bool, string) {
		leader, _, msgs, err := stackStreamInfo(alive.monitor)
		return err == nil && msgs == uint64(len(all)), fmt.Sprintf("leader %q, %d messages, want %d (err %v)", leader, msgs, len(all), err)
	})
	if _, err := os.Stat(filepath.Join(dir, "nats", killed.name)); err != nil {
		t.Fatalf("store of %s not where --store-dir put it: %v", killed.name, err)
	}
}
