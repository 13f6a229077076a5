package recorder

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/pkg/events"
)

// startSystemNATS runs the nats-server binary installed on the machine
// (often older than the embedded one) with JetStream in a temp dir, and
// returns a JetStream client with the streams created. The test is
// skipped when no binary is installed.
func startSystemNATS(t testing.TB) jetstream.JetStream {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/nats-server"); err != nil {
			t.Skip("no nats-server binary installed")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var nc *nats.Conn
	deadline := time.Now().Add(10 * time.Second)
	for {
		nc, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect to %s: %v", bin, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(nc.Close)
	t.Logf("nats-server %s", nc.ConnectedServerVersion())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return js
}

// TestPoisonEventIsTerminatedOnTheInstalledServer checks that a poison
// event stays terminated on the nats-server installed on the machine: a
// server before 2.10.4 ignores a term with a reason and redelivers.
func TestPoisonEventIsTerminatedOnTheInstalledServer(t *testing.T) {
	js, pool := startSystemNATS(t), startPostgres(t)
	opts := testOptions()
	opts.AckWait = 300 * time.Millisecond
	rec, err := New(js, pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), events.Subject("key1"), []byte("not json"), jetstream.WithMsgID("bad")); err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, event("good", "key1", 200), "good")
	runRecorder(t, rec)
	waitRows(t, pool, 1)
	// Redelivery of an ignored term comes after AckWait; give it several.
	time.Sleep(5 * opts.AckWait)
	if n := testutil.ToFloat64(rec.metrics.errors.WithLabelValues(errPoison)); n != 1 {
		t.Fatalf("poison event handled %v times, want once", n)
	}
	assertAllAcked(t, js)
}
