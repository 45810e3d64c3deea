package frontend

import (
	"fmt"
	"net"
	"syscall"
)

// unixPeerOf reads the peer process of a Unix socket (SO_PEERCRED).
func unixPeerOf(c *net.UnixConn) (UnixPeer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return UnixPeer{}, fmt.Errorf("unix peer: %w", err)
	}
	var cred *syscall.Ucred
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		cred, gerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return UnixPeer{}, fmt.Errorf("unix peer: %w", err)
	}
	if gerr != nil {
		return UnixPeer{}, fmt.Errorf("unix peer: SO_PEERCRED: %w", gerr)
	}
	return UnixPeer{PID: int(cred.Pid), UID: int(cred.Uid)}, nil
}
