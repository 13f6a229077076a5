package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// cmdNATS runs an embedded JetStream server until it is signalled, for
// machines without a nats-server.
func cmdNATS(args []string) error {
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:4222", "client address")
	store := fs.String("store", "", "JetStream store directory (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *store == "" {
		return fmt.Errorf("--store is required")
	}
	host, port, err := net.SplitHostPort(*listen)
	if err != nil {
		return err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return err
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "bench", Host: host, Port: p,
		JetStream: true, StoreDir: *store, NoSigs: true, NoLog: true,
	})
	if err != nil {
		return err
	}
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		return fmt.Errorf("nats did not start within 15s")
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	ns.Shutdown()
	ns.WaitForShutdown()
	return nil
}
