//go:build unix

package balancer

import "syscall"

// peerClosed reports whether the backend has closed the connection rc
// reaches (or sent bytes no request asked for): a peek that does not wait,
// so a connection with nothing to read — the kept-alive one waiting for
// its next request — is left as it is. A nil rc is never closed.
func peerClosed(rc syscall.RawConn) bool {
	if rc == nil {
		return false
	}
	closed := false
	var b [1]byte
	err := rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK || rerr == syscall.EINTR:
		case rerr != nil, n >= 0:
			// An error, the close (0 bytes) or stray bytes: either
			// way the connection cannot carry a request.
			closed = true
		}
		return true
	})
	return closed || err != nil
}
