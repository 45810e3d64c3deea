//go:build !linux

package frontend

import (
	"errors"
	"net"
)

// unixPeerOf: only Linux tells the peer process of a Unix socket here; all
// Unix-socket clients are then one client.
func unixPeerOf(*net.UnixConn) (UnixPeer, error) {
	return UnixPeer{}, errors.New("unix peer: not known on this system")
}
