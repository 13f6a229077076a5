// Command healthcheck is the container image's probe: the final image has no
// shell, curl or wget, so Docker and compose healthchecks run this instead.
//
//	healthcheck [URL]   (default http://127.0.0.1:8001/healthz)
//
// It exits 0 when URL answers 2xx within the timeout, 1 otherwise. It uses
// only the standard library and is built outside the workspace:
//
//	GOWORK=off go build -o healthcheck ./deploy/docker/healthcheck/main.go
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	url := "http://127.0.0.1:8001/healthz"
	if len(os.Args) > 1 {
		url = os.Args[1]
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		os.Exit(1)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(os.Stderr, "healthcheck: %s: %s\n", url, resp.Status)
		os.Exit(1)
	}
}
