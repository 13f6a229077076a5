package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// serveRecorder runs serve --target recorder with the config yaml until
// the test ends.
func serveRecorder(t *testing.T, yaml string) {
	t.Helper()
	serveTarget(t, filepath.Join(t.TempDir(), "llmproxy.yaml"), yaml, "recorder")
}

// readyz returns the status and body of GET url.
func readyz(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// recorderSchema returns PG_URL (or the recorder tests' default) with
// its search_path set to a new schema dropped at the test's end. It skips
// the test when PostgreSQL is unreachable, and fails it under CI.
func recorderSchema(t *testing.T) string {
	t.Helper()
	url := os.Getenv("PG_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s is required under CI: %v", url, err)
		}
		t.Skipf("PostgreSQL at %s unreachable (set PG_URL): %v", url, err)
	}
	defer conn.Close(ctx)
	schema := fmt.Sprintf("cmd_ready_%d", time.Now().UnixNano())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, url); err == nil {
			_, _ = c.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
			_ = c.Close(ctx)
		}
	})
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "search_path=" + schema
}

// TestRecorderReadyzSeesPostgres: a recorder's /readyz refuses while
// PostgreSQL, the database it writes the request log to, cannot be
// reached, saying so, and is ready once it can write.
func TestRecorderReadyzSeesPostgres(t *testing.T) {
	ns := startNATS(t, "127.0.0.1", -1)
	for _, c := range []struct {
		name string
		url  string
		want int
	}{
		{"postgres down", "postgres://postgres@" + freeAddr(t) + "/test?sslmode=disable&connect_timeout=1", http.StatusServiceUnavailable},
		{"postgres up", recorderSchema(t), http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			admin := freeAddr(t)
			serveRecorder(t, fmt.Sprintf("data_dir: %q\nnats: {url: %q}\nadmin: {listen: %q, token: admin-token-0123456789}\nbackends: [{url: \"http://127.0.0.1:9\"}]\nlogging: {level: warn, postgres: {url: %q}}\n",
				filepath.Join(t.TempDir(), "data"), ns.ClientURL(), admin, c.url))
			eventually(t, 20*time.Second, fmt.Sprintf("the recorder's /readyz answering %d", c.want), func() (bool, string) {
				code, body := readyz("http://" + admin + "/readyz")
				if code == http.StatusServiceUnavailable && !strings.Contains(body, "postgres") {
					t.Fatalf("/readyz refuses without naming postgres: %q", body)
				}
				return code == c.want, fmt.Sprintf("%d %q", code, body)
			})
		})
	}
}
