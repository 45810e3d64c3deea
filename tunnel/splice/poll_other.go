//go:build !linux

package splice

import (
	"net"
	"syscall"
)

// pollable: only Linux has the epoll set that waits for idle sockets
// (poll_linux.go); elsewhere NewAsync declines every pair, and callers use
// Splice.
func pollable(net.Conn) (syscall.RawConn, bool) { return nil, false }

// newPolled is never reached where pollable declines every socket.
func newPolled(net.Conn, net.Conn, syscall.RawConn, *int64, func(net.Conn, error, error)) (start func(bool), kick func()) {
	panic("splice: no epoll set on this system")
}
