//go:build !unix

package balancer

import "syscall"

// peerClosed cannot peek here: a connection the backend closed is told
// when a request fails on it (see resendable).
func peerClosed(syscall.RawConn) bool { return false }
