package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// pullDropper is a TCP proxy in front of NATS that loses the first pull
// request ($JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>) each consumer
// sends through it, and passes everything else through. The consumer's
// client then believes a pull is outstanding that the server never got:
// the state of nats.go issue 1622 (events pending, no waiting pulls).
type pullDropper struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	dropped map[string]time.Time // consumer subject -> when its pull was lost
}

func startPullDropper(t *testing.T, natsURL string) *pullDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pullDropper{ln: ln, target: strings.TrimPrefix(natsURL, "nats://"), dropped: map[string]time.Time{}}
	t.Cleanup(func() { ln.Close() })
	go p.serve()
	return p
}

func (p *pullDropper) url() string { return "nats://" + p.ln.Addr().String() }

func (p *pullDropper) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		go func() { _, _ = io.Copy(c, s); c.Close() }()
		go func() { p.filter(s, c); s.Close() }()
	}
}

// filter copies the client's protocol stream to the server, leaving out the
// first pull request of each consumer.
func (p *pullDropper) filter(dst io.Writer, src io.Reader) {
	r := bufio.NewReader(src)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var payload []byte
		f := strings.Fields(string(line))
		if len(f) >= 3 && (f[0] == "PUB" || f[0] == "HPUB") {
			n, err := strconv.Atoi(f[len(f)-1])
			if err != nil {
				return
			}
			payload = make([]byte, n+2) // the payload and its CRLF
			if _, err := io.ReadFull(r, payload); err != nil {
				return
			}
			if strings.HasPrefix(f[1], "$JS.API.CONSUMER.MSG.NEXT.") && p.dropFirst(f[1]) {
				continue
			}
		}
		if _, err := dst.Write(append(line, payload...)); err != nil {
			return
		}
	}
}

func (p *pullDropper) dropFirst(subject string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.dropped[subject]; ok {
		return false
	}
	p.dropped[subject] = time.Now()
	return true
}

func (p *pullDropper) lost() map[string]time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]time.Time, len(p.dropped))
	for k, v := range p.dropped {
		out[k] = v
	}
	return out
}

// TestConsumersRecoverFromLostPullRequest: the meter and the notifier each
// lose their first pull request on the way to NATS. Both must notice within
// a few seconds and deliver every event; with the client library's default
// pull expiry (30 s) they sat idle for 30 s with the events pending.
func TestConsumersRecoverFromLostPullRequest(t *testing.T) {
	rurl, prefix := redisPrefix(t, "e2e")
	_, natsURL := natsServer(t)
	drop := startPullDropper(t, natsURL)

	mock := startMock(t, "--tokens", "7")
	recv, hook := startReceiver(t)

	dir := t.TempDir()
	listen := freeAddr(t)
	direct := filepath.Join(dir, "gateway.yaml")
	writeFile(t, direct, distributedConfig(listen, filepath.Join(dir, "gw"), natsURL, rurl, prefix, mock, hook.URL))
	viaDropper := filepath.Join(dir, "consumers.yaml")
	writeFile(t, viaDropper, distributedConfig(freeAddr(t), filepath.Join(dir, "cons"), drop.url(), rurl, prefix, mock, hook.URL))
	meterAdmin, notifierAdmin := freeAddr(t), freeAddr(t)
	start(t, "llmproxy", "serve", "--config", direct, "--target", "gateway")
	start(t, "llmproxy", "serve", "--config", viaDropper, "--target", "meter", "--admin-listen", meterAdmin)
	start(t, "llmproxy", "serve", "--config", viaDropper, "--target", "notifier", "--admin-listen", notifierAdmin)
	gw := "http://" + listen
	waitHTTP(t, gw+"/readyz")
	waitHTTP(t, "http://"+meterAdmin+"/readyz")
	waitHTTP(t, "http://"+notifierAdmin+"/readyz")

	// Both consumers have sent their first pull, and lost it.
	eventually(t, 10*time.Second, "both consumers' first pull lost", func() (bool, string) {
		l := drop.lost()
		return len(l) == 2, fmt.Sprintf("lost pulls: %v", l)
	})

	const n = 5
	sent := time.Now()
	for i := range n {
		resp, body := send(t, gw, "/v1/chat/completions", fmt.Sprintf("lost-pull-%d", i),
			`{"model":"m","messages":[{"role":"user","content":"hi"}]}`, map[string]string{"Authorization": "Bearer " + keyAlpha})
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	// Within 10 s: the heartbeat check (1 s heartbeats, 2 s expiry) sends a
	// new pull after 2 s.
	eventually(t, 10*time.Second, "webhooks delivered despite the lost pull", func() (bool, string) {
		return recv.count() == n, fmt.Sprintf("%d of %d delivered", recv.count(), n)
	})
	eventually(t, 10*time.Second, "usage metered despite the lost pull", func() (bool, string) {
		rows, err := usageOf(t, direct)
		if err != nil {
			return false, err.Error()
		}
		return rows["alpha"].Requests == n, fmt.Sprintf("usage: %+v", rows["alpha"])
	})
	t.Logf("delivered and metered %s after the requests", time.Since(sent).Round(100*time.Millisecond))
}
