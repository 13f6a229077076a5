//go:build !unix

package balancer

import "net"

// peerClosed cannot peek here: a connection the backend closed is told
// when a request fails on it (see resendable).
func peerClosed(net.Conn) bool { return false }
