package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

// cmdSink runs a webhook receiver that accepts every POST at once; GET
// /count says how many it has taken.
func cmdSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9300", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var n atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, n.Load())
	})
	return http.ListenAndServe(*listen, mux)
}
