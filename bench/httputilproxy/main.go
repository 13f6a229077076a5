// Command httputilproxy is the benchmark's reference proxy: a bare
// net/http/httputil.ReverseProxy with FlushInterval -1 (every write is
// flushed at once) and nothing else, so LLMProxy's figures can be read as
// ratios to what the standard library gives for free.
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9100", "address to listen on")
	target := flag.String("target", "http://127.0.0.1:9000", "upstream base URL")
	flag.Parse()

	u, err := url.Parse(*target)
	if err != nil {
		log.Fatalf("httputilproxy: --target: %v", err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	// The default transport keeps 2 idle connections per host; the
	// reference must not be handicapped by redialling under concurrency.
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 1024
	rp.Transport = t
	log.Printf("httputilproxy: %s -> %s", *listen, u)
	log.Fatal(http.ListenAndServe(*listen, rp))
}
