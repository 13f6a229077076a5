package recorder

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func TestOpenPoolNeverPrintsThePassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, url := range []string{
		"postgres://u:s3cret@127.0.0.1:1/db?sslmode=disable&connect_timeout=1",
		"postgres://u:s3cret@[bad",
		"host=127.0.0.1 port=1 user=u password=s3cret sslmode=disable connect_timeout=1",
	} {
		pool, err := OpenPool(ctx, url)
		if err == nil {
			pool.Close()
			t.Fatalf("OpenPool(%q): want an error", url)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("OpenPool error leaks the password: %v", err)
		}
	}
}

func TestReplaceNULEscapes(t *testing.T) {
	for in, want := range map[string]string{
		`"a\u0000b"`:        `"a\ufffdb"`,
		`"\\u0000"`:         `"\\u0000"`,
		`"\\\u0000"`:        `"\\\ufffd"`,
		`{"k\u0000":1}`:     `{"k\ufffd":1}`,
		`"\u00001\u000"`:    `"\ufffd1\u000"`,
		`"no escapes here"`: `"no escapes here"`,
	} {
		if got := string(replaceNULEscapes([]byte(in))); got != want {
			t.Errorf("replaceNULEscapes(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestOpenPoolGivesUpOnASilentServer: a server that takes the connection
// and never answers (stopped, or behind a stalled proxy) fails the connect
// within the connect timeout, not the caller's whole deadline.
func TestOpenPoolGivesUpOnASilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	defer func(d time.Duration) { connectTimeout = d }(connectTimeout)
	connectTimeout = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background()) // no deadline of its own
	defer cancel()
	done := make(chan error, 1)
	go func() {
		pool, err := OpenPool(ctx, "postgres://u@"+ln.Addr().String()+"/db?sslmode=disable")
		if err == nil {
			pool.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("OpenPool of a silent server: no error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("OpenPool of a silent server did not give up")
	}
}

// TestCheckTableNamesMissingColumns: a table that lacks a column the
// recorder writes is named with the column, rather than taken and every
// batch failing on it.
func TestCheckTableNamesMissingColumns(t *testing.T) {
	pool := startPostgres(t)
	ctx := context.Background()
	if err := CheckTable(ctx, pool); err != nil {
		t.Fatalf("CheckTable on the migrated table: %v", err)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE `+Table+` DROP COLUMN finish_reason`); err != nil {
		t.Fatal(err)
	}
	if err := CheckTable(ctx, pool); !errors.Is(err, ErrMissingColumns) || !strings.Contains(err.Error(), "lacks the recorder's columns finish_reason") {
		t.Fatalf("CheckTable = %v, want the missing column named", err)
	}
	// A check that could not be made is no missing column: the recorder
	// takes it as a failed write, not as the table refusing events.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := CheckTable(cctx, pool); err == nil || errors.Is(err, ErrMissingColumns) {
		t.Fatalf("CheckTable without a database = %v, want an error other than ErrMissingColumns", err)
	}
}
