package gateway

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// deadlineRecorder is a ResponseRecorder that takes write deadlines.
type deadlineRecorder struct{ *httptest.ResponseRecorder }

func (deadlineRecorder) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkSendPace: what server.send_timeout costs a reply sent in time,
// without the client's connection known and with it (the watch's timer,
// which a reply sent in time never fires).
func BenchmarkSendPace(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	for _, tc := range []struct {
		name string
		c    net.Conn
	}{{"without the connection", nil}, {"with the connection", conn}} {
		b.Run(tc.name, func(b *testing.B) {
			rc := http.NewResponseController(deadlineRecorder{httptest.NewRecorder()})
			b.ReportAllocs()
			for b.Loop() {
				p := newSendPace(rc, time.Minute, tc.c)
				p.arm()
				p.done()
			}
		})
	}
}
