package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/llmproxy/llmproxy/pkg/config"
	"github.com/llmproxy/llmproxy/pkg/ledger"
	"github.com/llmproxy/llmproxy/services/gateway"
)

// The single binary's NATS server runs inside `llmproxy serve` (target all,
// nats.url empty), its JetStream store under data_dir/nats. CLI commands
// that read the stream (logs, webhooks dlq) reach it with nothing but
// data_dir:
//
//   - serve holds the store's lock (storelock.go) while the server runs,
//     accepts clients on 127.0.0.1 at a port the kernel picks (or on
//     nats.embedded_listen when set), and writes where, with the token
//     clients present, to the client file data_dir/nats-client.json (mode
//     0600, replaced atomically, removed at a clean shutdown);
//   - a command that finds the lock taken reads the client file and
//     connects there;
//   - a command that gets the lock knows no server runs (a client file left
//     by a process that crashed is stale, and removed): it starts the
//     server itself on the store, with no listener, for as long as it runs.
//     A serve started meanwhile waits for the lock (serveLockWait).

const (
	// clientFileName is the client file under data_dir.
	clientFileName = "nats-client.json"
	// serveLockWait is how long serve waits for the store's lock, which a
	// CLI command that opened the store itself holds while it runs.
	serveLockWait = 30 * time.Second
	// cliReachWait bounds how long a CLI command waits for the server that
	// holds the store to write its client file (it is starting) or to let
	// go of the store (it is stopping).
	cliReachWait = 10 * time.Second
)

// embeddedServer is a running embedded NATS server and the store lock its
// process holds until the server has shut down.
type embeddedServer struct {
	ns *server.Server
	// token is what clients present; "" when the server asks none. With
	// user set (nats.embedded_listen), it is that user's password.
	token string
	// user is the account this process and the CLI connect as when the
	// server listens on nats.embedded_listen, where clients without
	// credentials may only read (see readerPermissions).
	user string
	lock *storeLock
	// clientFile is the client file this server wrote, "" when it does not
	// listen.
	clientFile string
	// storeFailed is the server's last failure to write its store
	// (logTo), nil before any. A store whose write failed fails every
	// write after it (nats-server does not try it again) until the
	// process starts again, even once data_dir has room.
	storeFailed atomic.Pointer[storeFailure]
}

// embeddedMaxPayload is the largest message the embedded server takes for
// cfg: an event carries a request body up to max_body_bytes and a captured
// response, JSON-escaped; at most NATS's 64 MiB.
func embeddedMaxPayload(cfg *config.Config) int32 {
	return int32(min(cfg.Server.MaxBodyBytes+6*int64(cfg.Logging.MaxCaptureBytes)+1<<20, 64<<20))
}

// storeFailure is a failed write of the embedded server's store: when, and
// the server's words.
type storeFailure struct {
	at  time.Time
	msg string
}

// embeddedClient is the content of the client file.
type embeddedClient struct {
	// URL is where the server accepts clients.
	URL string `json:"url"`
	// Token authenticates a client: as a token, or as User's password
	// when User is set (nats.embedded_listen).
	Token string `json:"token,omitempty"`
	User  string `json:"user,omitempty"`
	// PID is the server's process.
	PID int `json:"pid"`
}

// startEmbedded starts the embedded server on cfg's data_dir; the caller
// holds lock, which the server now owns (released at shutdown, or at once
// if the server fails to start). With listen (llmproxy serve) the server
// accepts clients on nats.embedded_listen, without authentication as that
// key always has, or else on 127.0.0.1 at a free port with a random token,
// and writes the client file; without it only this process's in-process
// connections reach it.
func startEmbedded(cfg *config.Config, lock *storeLock, listen bool) (*embeddedServer, error) {
	e := &embeddedServer{lock: lock}
	dir := cfg.DataPath("nats")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		lock.release()
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	opts := &server.Options{
		ServerName: "llmproxy-embedded",
		JetStream:  true,
		StoreDir:   filepath.Clean(dir),
		NoSigs:     true,
		NoLog:      true,
		DontListen: true,
		MaxPayload: embeddedMaxPayload(cfg),
		// The gateway's outbox drops an event OutboxDurableDelay after
		// its publish was acknowledged, and the server acknowledges
		// before it fsyncs: with nats-server's default (2 minutes) a
		// power loss could take up to that much acknowledged usage with
		// it. Syncing at half the delay leaves the other half for the
		// write-behind and the fsync itself.
		SyncInterval: gateway.OutboxDurableDelay / 2,
	}
	if listen {
		opts.DontListen = false
		if l := cfg.NATS.EmbeddedListen; l != "" {
			host, port, err := net.SplitHostPort(l)
			if err != nil {
				lock.release()
				return nil, fmt.Errorf("nats.embedded_listen: %w", err)
			}
			p, err := strconv.Atoi(port)
			if err != nil {
				lock.release()
				return nil, fmt.Errorf("nats.embedded_listen: bad port %q", port)
			}
			opts.Host, opts.Port = host, p
			// Clients without credentials may read the events (the
			// listener is for other systems to subscribe), not publish
			// one (usage a ledger would bill), take a consumer's
			// messages (a meter's, unapplied) or purge the stream; this
			// process and the CLI log in as the full user, whose
			// password is in the client file (0600).
			token, err := randomToken()
			if err != nil {
				lock.release()
				return nil, err
			}
			e.token, e.user = token, embeddedUser
			opts.Users = []*server.User{
				{Username: embeddedUser, Password: token},
				{Username: embeddedReader, Permissions: readerPermissions()},
			}
			opts.NoAuthUser = embeddedReader
		} else {
			// Loopback only, and a token: other users of the host can
			// reach the port but cannot read data_dir, where the token is.
			token, err := randomToken()
			if err != nil {
				lock.release()
				return nil, err
			}
			e.token = token
			opts.Host, opts.Port, opts.Authorization = "127.0.0.1", server.RANDOM_PORT, e.token
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		lock.release()
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	e.ns = ns
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		e.shutdown()
		return nil, fmt.Errorf("embedded nats did not start within 15s")
	}
	if listen {
		c := embeddedClient{URL: embeddedURL(ns.Addr().String()), Token: e.token, User: e.user, PID: os.Getpid()}
		path := cfg.DataPath(clientFileName)
		if err := writeClientFile(path, c); err != nil {
			e.shutdown()
			return nil, err
		}
		e.clientFile = path
	}
	return e, nil
}

// The embedded server's users on nats.embedded_listen: the full one this
// process and the CLI log in as, and the one clients without credentials
// get.
const (
	embeddedUser   = "llmproxy"
	embeddedReader = "reader"
)

// readerPermissions let a client without credentials on
// nats.embedded_listen subscribe to anything (the events as they are
// published, on llmproxy.v1.>) and read the streams' messages and state
// through the JetStream API's read-only requests, and nothing else: no
// publish to an event subject, no consumer (whose acks could take a
// meter's events before it applies them), no purge or delete. A system
// that needs a durable consumer of its own uses an external NATS.
func readerPermissions() *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			"$JS.API.INFO",
			"$JS.API.STREAM.NAMES",
			"$JS.API.STREAM.LIST",
			"$JS.API.STREAM.INFO.*",
			"$JS.API.STREAM.MSG.GET.*",
			"$JS.API.DIRECT.GET.>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{">"}},
	}
}

// randomToken returns 32 random bytes in hex.
func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// auth is the option a client of c's server connects with.
func (c embeddedClient) auth() nats.Option {
	if c.User != "" {
		return nats.UserInfo(c.User, c.Token)
	}
	return nats.Token(c.Token)
}

// auth is the option this process's in-process connection uses.
func (e *embeddedServer) auth() nats.Option {
	return embeddedClient{Token: e.token, User: e.user}.auth()
}

// logTo sends the server's warnings and errors to log ("nats: " and the
// server's own words), which NoLog otherwise drops: a store write that
// fails and turns JetStream off must reach the operator. Its notices,
// debug and trace lines are left out.
func (e *embeddedServer) logTo(log *slog.Logger) {
	e.ns.SetLoggerV2(natsLogger{log, e}, false, false, false)
}

// natsLogger is a nats-server logger writing to a slog.Logger; it keeps the
// store's write failures in e.
type natsLogger struct {
	log *slog.Logger
	e   *embeddedServer
}

func (l natsLogger) Noticef(string, ...any) {}
func (l natsLogger) Debugf(string, ...any)  {}
func (l natsLogger) Tracef(string, ...any)  {}
func (l natsLogger) Warnf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.noteStore(msg)
	l.log.Warn("nats: " + msg)
}

// noteStore keeps msg when it is the server's failure to write its store
// (nats-server's filestore's words).
func (l natsLogger) noteStore(msg string) {
	if l.e != nil && strings.Contains(msg, "Critical write error") {
		l.e.storeFailed.Store(&storeFailure{at: time.Now(), msg: msg})
	}
}

func (l natsLogger) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.noteStore(msg)
	if strings.Contains(msg, " - cid:") {
		// One client's trouble (a wrong token, a slow reader), which the
		// server names by its connection id: a warning, not the server's
		// own failure.
		l.log.Warn("nats: " + msg)
		return
	}
	l.log.Error("nats: " + msg)
}
func (l natsLogger) Fatalf(format string, v ...any) { l.Errorf(format, v...) }

// url is where clients reach the server: its listener, or the in-process
// connection's placeholder when it has none.
func (e *embeddedServer) url() string {
	if e.clientFile != "" {
		return embeddedURL(e.ns.Addr().String())
	}
	return e.ns.ClientURL()
}

// shutdown removes the client file, stops the server and releases the
// store's lock, in that order: a CLI command that meanwhile finds the lock
// taken and no client file waits for the lock.
func (e *embeddedServer) shutdown() {
	if e.clientFile != "" {
		_ = os.Remove(e.clientFile)
	}
	if e.ns != nil {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	}
	e.lock.release()
}

// writeClientFile replaces path with c, atomically (a reader sees the old
// file or the new one, never a part), readable by its owner only.
func writeClientFile(path string, c embeddedClient) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+clientFileName+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readClientFile reads cfg's client file; an error wrapping fs.ErrNotExist
// when there is none.
func readClientFile(cfg *config.Config) (embeddedClient, error) {
	var c embeddedClient
	path := cfg.DataPath(clientFileName)
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil || c.URL == "" {
		return c, fmt.Errorf("%s: not a client file of llmproxy serve", path)
	}
	return c, nil
}

// reachEmbedded connects a CLI command to the embedded server of cfg's
// data_dir: the running serve's, or, when none runs, one it starts itself
// on the store (see the top of this file). extra are the command's
// connection options.
func reachEmbedded(ctx context.Context, cfg *config.Config, extra []nats.Option, log *slog.Logger) (*bus, error) {
	store := cfg.DataPath("nats")
	if _, err := os.Stat(store); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no event store at %s: nats.url is empty and llmproxy serve has not run with this data_dir "+
				"(a relative data_dir is taken from the working directory)", store)
		}
		return nil, err
	}
	deadline := time.Now().Add(cliReachWait)
	for {
		lock, err := lockStore(ctx, cfg, 0)
		if err == nil {
			return openStore(ctx, cfg, lock, extra, log)
		}
		if !errors.Is(err, errStoreBusy) {
			return nil, err
		}
		// A server holds the store: connect where its client file says.
		c, err := readClientFile(cfg)
		switch {
		case err == nil:
			b, cerr := connectBus(ctx, cfg, c.URL, nil, append(extra, c.auth()), false, log)
			if cerr == nil {
				return b, nil
			}
			err = fmt.Errorf("connect to %s: %w", c.URL, cerr)
		case errors.Is(err, fs.ErrNotExist):
			err = fmt.Errorf("it has written no %s", cfg.DataPath(clientFileName))
		default:
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the llmproxy process holding data_dir %s (pid %s) cannot be reached: %w",
				cfg.DataPath(), storeHolder(cfg), err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// openStore connects a CLI command that holds the store's lock: to a server
// that answers at the client file's address where no flock(2) proves none
// runs, else to a server of its own, without a listener, on the store.
func openStore(ctx context.Context, cfg *config.Config, lock *storeLock, extra []nats.Option, log *slog.Logger) (*bus, error) {
	if c, err := readClientFile(cfg); err == nil && !storeLocking {
		if b, err := connectBus(ctx, cfg, c.URL, nil, append(extra, c.auth()), false, log); err == nil {
			lock.release()
			return b, nil
		}
	}
	// A client file now is stale, left by a server that crashed.
	_ = os.Remove(cfg.DataPath(clientFileName))
	// A server older than the store's lock holds the local ledger but not
	// the lock; a second server on its NATS store would corrupt it.
	if path := cfg.DataPath("ledger.db"); !cfg.Redis.Enabled() {
		if _, err := os.Stat(path); err == nil {
			s, err := ledger.OpenLocal(path)
			if errors.Is(err, ledger.ErrLocked) {
				lock.release()
				return nil, fmt.Errorf("a running llmproxy holds %s but has not said where its NATS server listens: restart it with this version, or set nats.url", path)
			}
			if err == nil {
				_ = s.Close()
			}
		}
	}
	e, err := startEmbedded(cfg, lock, false)
	if err != nil {
		return nil, err
	}
	return connectBus(ctx, cfg, "", e, extra, false, log)
}

// embeddedURL is the client URL of an embedded server listening on listen
// ("host:port"), "" when it does not listen. A wildcard host is reached on
// the loopback address.
func embeddedURL(listen string) string {
	if listen == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	return "nats://" + net.JoinHostPort(host, port)
}
