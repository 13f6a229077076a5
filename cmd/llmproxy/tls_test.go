package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// testPKI is a CA and a server and a client certificate it signed, as PEM
// files in dir.
type testPKI struct {
	dir                       string
	ca                        *x509.CertPool
	server                    tls.Certificate
	caFile, certFile, keyFile string // the CA, the client's certificate and key
	serverCert, serverKeyFile string
	otherCAFile               string // a CA that signed none of them
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir(), ca: x509.NewCertPool()}
	write := func(name, typ string, der []byte) string {
		f := filepath.Join(p.dir, name)
		if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	serial := int64(1)
	sign := func(tmpl *x509.Certificate, pub *ecdsa.PublicKey, parent *x509.Certificate, signer *ecdsa.PrivateKey) []byte {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "llmproxy test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER := sign(caTmpl, &caKey.PublicKey, nil, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	p.ca.AddCert(caCert)
	p.caFile = write("ca.pem", "CERTIFICATE", caDER)

	srvKey := newKey()
	srvDER := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, &srvKey.PublicKey, caCert, caKey)
	p.server = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	p.serverCert = write("server.pem", "CERTIFICATE", srvDER)
	p.serverKeyFile = write("server-key.pem", "EC PRIVATE KEY", keyDER(srvKey))

	cliKey := newKey()
	cliDER := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "llmproxy"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &cliKey.PublicKey, caCert, caKey)
	p.certFile = write("client.pem", "CERTIFICATE", cliDER)
	p.keyFile = write("client-key.pem", "EC PRIVATE KEY", keyDER(cliKey))

	otherKey := newKey()
	p.otherCAFile = write("other-ca.pem", "CERTIFICATE", sign(&x509.Certificate{Subject: pkix.Name{CommonName: "another CA"},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, &otherKey.PublicKey, nil, otherKey))
	return p
}

// TestNATSOverTLSWithClientCertificates: nats.tls gives the connection its
// CA (a private one, not the system's) and a client certificate, for a
// server that verifies clients; without the certificate, or with another
// CA, the bus is not connected and says why.
func TestNATSOverTLSWithClientCertificates(t *testing.T) {
	pki := newTestPKI(t)
	ns := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pki.server}, ClientCAs: pki.ca, ClientAuth: tls.RequireAndVerifyClientCert},
		TLSVerify: true, TLSTimeout: 2})
	for _, c := range []struct {
		name string
		tls  config.TLS
		why  string // "" for connected
	}{
		{"ca and client certificate", config.TLS{CAFile: pki.caFile, CertFile: pki.certFile, KeyFile: pki.keyFile}, ""},
		// TLS 1.3 refuses a missing client certificate after the
		// handshake: the client sees the connection closed, or the
		// certificate asked for, whichever it reads first.
		{"no client certificate", config.TLS{CAFile: pki.caFile}, "tls"},
		{"another ca", config.TLS{CAFile: pki.otherCAFile, CertFile: pki.certFile, KeyFile: pki.keyFile}, "certificate signed by unknown authority"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := &config.Config{}
			cfg.NATS.URL = "tls://" + ns.Addr().String()
			cfg.NATS.TLS = c.tls
			b, err := openBus(context.Background(), cfg, false, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer b.close()
			if c.why == "" {
				if err := b.ready(); err != nil {
					t.Fatalf("ready: %v", err)
				}
				select {
				case <-b.streams:
				case <-time.After(10 * time.Second):
					t.Fatal("the streams were not made over TLS")
				}
				return
			}
			waitWhy(b)
			if err := b.ready(); err == nil || !strings.Contains(err.Error(), c.why) {
				t.Fatalf("ready = %v, want it to say %q", err, c.why)
			}
		})
	}
}

// TestNATSCredentialsFile: nats.credentials (a user's JWT and NKey seed, as
// nsc writes them) connects to a server in operator mode; a connection
// without it is refused.
func TestNATSCredentialsFile(t *testing.T) {
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.IssuerAccount = apub
	ujwt, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(t.TempDir(), "user.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	op, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	// Operator mode with JetStream wants a system account.
	skp, _ := nkeys.CreateAccount()
	spub, _ := skp.PublicKey()
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	for pub, j := range map[string]string{apub: ajwt, spub: sjwt} {
		if err := resolver.Store(pub, j); err != nil {
			t.Fatal(err)
		}
	}
	ns := runNATS(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		TrustedOperators: []*jwt.OperatorClaims{op}, AccountResolver: resolver, SystemAccount: spub})
	cfg := &config.Config{}
	cfg.NATS.URL = ns.ClientURL()
	cfg.NATS.Credentials = credsFile
	b, err := openBus(context.Background(), cfg, false, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if err := b.ready(); err != nil {
		t.Fatalf("ready with the credentials: %v", err)
	}
	select {
	case <-b.streams:
	case <-time.After(10 * time.Second):
		t.Fatal("the streams were not made with the credentials")
	}
	cfg.NATS.Credentials = ""
	if cli, err := openBus(context.Background(), cfg, false, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		defer cli.close()
		if cli.ready() == nil {
			t.Fatal("connected without credentials to a server in operator mode")
		}
	}
}

// runRedisServer runs a redis-server of the test's own on a free port of
// 127.0.0.1, with the arguments args gives for that port (after --bind and
// a store in a temporary directory), and returns its address once it takes
// connections. It skips the test on a machine without redis-server.
func runRedisServer(t *testing.T, args func(port int) []string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("no redis-server to run")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir()}, args(port)...)...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not start")
		}
	}
}

// TestRedisOverTLSWithClientCertificates: redis.tls gives the connection
// a private CA and a client certificate, for a Redis that verifies
// clients (tls-auth-clients), and redis.username an ACL user. It runs a
// redis-server of its own, as CI machines have one.
func TestRedisOverTLSWithClientCertificates(t *testing.T) {
	pki := newTestPKI(t)
	addr := runRedisServer(t, func(port int) []string {
		return []string{"--port", "0", "--tls-port", fmt.Sprint(port),
			"--tls-cert-file", pki.serverCert, "--tls-key-file", pki.serverKeyFile, "--tls-ca-cert-file", pki.caFile,
			"--tls-auth-clients", "yes", "--user", "default", "off", "--user", "gw", "on", ">gw-secret-1", "~*", "&*", "+@all"}
	})
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	for _, c := range []struct {
		name string
		r    config.Redis
		ok   bool
	}{
		{"url", config.Redis{URL: "redis://" + addr, Username: "gw", Password: "gw-secret-1",
			TLS: config.TLS{CAFile: pki.caFile, CertFile: pki.certFile, KeyFile: pki.keyFile}}, true},
		{"rediss url", config.Redis{URL: "rediss://gw:gw-secret-1@localhost:" + port,
			TLS: config.TLS{CAFile: pki.caFile, CertFile: pki.certFile, KeyFile: pki.keyFile}}, true},
		{"no client certificate", config.Redis{URL: "redis://" + addr, Username: "gw", Password: "gw-secret-1",
			TLS: config.TLS{CAFile: pki.caFile}}, false},
		{"wrong user", config.Redis{URL: "redis://" + addr, Username: "default", Password: "gw-secret-1",
			TLS: config.TLS{CAFile: pki.caFile, CertFile: pki.certFile, KeyFile: pki.keyFile}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			rdb, err := openRedis(&config.Config{Redis: c.r})
			if err != nil {
				t.Fatal(err)
			}
			defer rdb.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = rdb.Set(ctx, "llmproxy-test:tls", "1", time.Minute).Err()
			if (err == nil) != c.ok {
				t.Fatalf("SET over TLS: %v, want ok %v", err, c.ok)
			}
		})
	}
}

// TestWebhookTLSFiles: a webhook's tls files reach its endpoint as its
// TLS configuration (the notifier's test delivers with one).
func TestWebhookTLSFiles(t *testing.T) {
	pki := newTestPKI(t)
	path := filepath.Join(pki.dir, "c.yaml")
	y := fmt.Sprintf("backends: [{url: http://127.0.0.1:9}]\nwebhooks:\n  - {name: audit, url: https://audit.internal/x, tls: {ca_file: ca.pem, cert_file: client.pem, key_file: client-key.pem}}\n  - {name: plain, url: https://b.internal/x}\n")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	eps, err := endpointsOf(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if eps[0].TLSConfig == nil || eps[0].TLSConfig.RootCAs == nil || len(eps[0].TLSConfig.Certificates) != 1 || eps[1].TLSConfig != nil {
		t.Fatalf("endpoints' TLS: %+v, %+v", eps[0].TLSConfig, eps[1].TLSConfig)
	}
}
