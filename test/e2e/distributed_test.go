package e2e

import (
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// distributedConfig is one config shared by the gateway, meter and
// notifier processes, against an external NATS and Redis.
func distributedConfig(listen, dataDir, natsURL, redisURL, prefix, backend, hook string) string {
	return fmt.Sprintf(`
listen: %q
data_dir: %q
nats: { url: %q }
redis: { url: %q, prefix: %q }
backends:
  - url: %q
usage_hook:
  url: %q
  retry: 20
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

func TestDistributedTargetsWithMeterKilled(t *testing.T) {
	rurl, prefix := redisPrefix(t, "e2e")
	_, natsURL := natsServer(t)

	mock := startMock(t, "--tokens", "7")
	recv, hook := startReceiver(t)

	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "llmproxy.yaml")
	writeFile(t, cfg, distributedConfig(listen, filepath.Join(dir, "data"), natsURL, rurl, prefix, mock, hook.URL))
	metricsAddr := freeAddr(t)
	start(t, "llmproxy", "serve", "--config", cfg, "--target", "gateway")
	m := start(t, "llmproxy", "serve", "--config", cfg, "--target", "meter", "--admin-listen", metricsAddr)
	start(t, "llmproxy", "serve", "--config", cfg, "--target", "notifier", "--admin-listen", freeAddr(t))
	gw := "http://" + listen
	waitHTTP(t, gw+"/healthz")
	waitHTTP(t, "http://"+metricsAddr+"/readyz")

	// Load from two clients while the meter is killed and restarted.
	var wg sync.WaitGroup
	var wantA, wantB tokens
	var idsA, idsB []string
	wg.Add(2)
	go func() { defer wg.Done(); wantA, idsA = mixedLoad(t, gw, mock, keyAlpha, "dist-a", 60) }()
	go func() { defer wg.Done(); wantB, idsB = mixedLoad(t, gw, mock, keyBeta, "dist-b", 30) }()
	eventually(t, 60*time.Second, "load under way", func() (bool, string) {
		return recv.count() >= 15, fmt.Sprintf("%d delivered", recv.count())
	})
	m.stop(syscall.SIGKILL)
	time.Sleep(300 * time.Millisecond)
	m.start()
	wg.Wait()

	waitLedger(t, cfg, map[string]tokens{"alpha": wantA, "beta": wantB}, map[string]int64{"alpha": 60, "beta": 30})
	eventually(t, 30*time.Second, "webhooks delivered", func() (bool, string) {
		return recv.count() == len(idsA)+len(idsB), fmt.Sprintf("%d payloads", recv.count())
	})
	payloads := recv.snapshot()
	for _, id := range append(idsA, idsB...) {
		p, ok := payloads[id]
		if !ok {
			t.Fatalf("no webhook for %s", id)
		}
		checkWebhookPayload(t, id, p, keyAlpha, keyBeta)
	}
}
