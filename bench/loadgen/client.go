package main

import (
	"net"
	"net/http"
	"strings"
	"time"
)

// newClient returns a client whose pool keeps one idle keep-alive connection
// per worker, so a steady run never redials.
func newClient(conns int) *http.Client {
	t := &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:        conns + 16,
		MaxIdleConnsPerHost: conns + 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &http.Client{Transport: t}
}

// newRequest builds one request of the run; a fresh body reader each time.
func newRequest(c config) (*http.Request, error) {
	req, err := http.NewRequest(http.MethodPost, c.url, strings.NewReader(c.body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for _, h := range c.headers {
		req.Header.Set(h[0], h[1])
	}
	return req, nil
}
