package frontend

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// DefaultMaxPendingPerClient bounds the dials one frontend client may have
// waiting for an agent's answer (--max-pending-dials-per-client).
const DefaultMaxPendingPerClient = 4096

// maxAddress bounds a dial's "host:port" from a client: no host name is
// longer than 253 bytes, and the native link carries at most 1024.
const maxAddress = 1024

// checkAddress refuses what cannot be a dial target, without echoing it.
func checkAddress(address string) error {
	if len(address) > maxAddress {
		return fmt.Errorf("dial target of %d bytes: longer than any host:port (at most %d)", len(address), maxAddress)
	}
	if _, _, err := net.SplitHostPort(address); err != nil {
		return fmt.Errorf("dial target %q is not host:port", address)
	}
	return nil
}

// A frontend client is who sends the dials, not a connection:
// kube-apiserver opens a new connection for every dial on both frontends
// (one CONNECT per dial, CreateSingleUseGrpcTunnel), so a bound per
// connection would never bind it. Over a Unix socket the client is the
// peer process (SO_PEERCRED: one kube-apiserver, however many connections
// it opens); over TCP it is the remote IP address (one host: each
// kube-apiserver of an HA control plane is its own client).

// clientOf names the client of a frontend connection.
func clientOf(c net.Conn) string {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if uc, ok := c.(*net.UnixConn); ok {
		if p, err := unixPeerOf(uc); err == nil {
			return p.String()
		}
		return "unix"
	}
	return hostOf(c.RemoteAddr())
}

// clientOfStream names the client of a gRPC stream (see UnixPeerCreds).
func clientOfStream(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown"
	}
	if up, ok := p.AuthInfo.(UnixPeer); ok {
		return up.String()
	}
	if p.Addr != nil && p.Addr.Network() == "unix" {
		return "unix"
	}
	return hostOf(p.Addr)
}

func hostOf(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

// UnixPeer is the process at the other end of a Unix socket.
type UnixPeer struct {
	credentials.CommonAuthInfo
	PID, UID int
}

// String names the peer as a client: "pid 1234 (uid 0)".
func (p UnixPeer) String() string {
	return "pid " + strconv.Itoa(p.PID) + " (uid " + strconv.Itoa(p.UID) + ")"
}

// AuthType implements credentials.AuthInfo.
func (UnixPeer) AuthType() string { return "unix-peer" }

// UnixPeerCreds are gRPC server credentials for the frontend's Unix socket:
// nothing on the wire (as insecure credentials), but each connection's
// peer process is known to the handlers (peer.AuthInfo is a UnixPeer).
func UnixPeerCreds() credentials.TransportCredentials { return unixPeerCreds{} }

type unixPeerCreds struct{}

func (unixPeerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("frontend: unix peer credentials on a connection that is no Unix socket")
	}
	p, err := unixPeerOf(uc)
	if err != nil {
		return nil, nil, err
	}
	p.SecurityLevel = credentials.NoSecurity
	return c, p, nil
}

func (unixPeerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("frontend: unix peer credentials are server-only")
}

func (unixPeerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}
func (c unixPeerCreds) Clone() credentials.TransportCredentials { return c }
func (unixPeerCreds) OverrideServerName(string) error           { return nil }

// clientLimit bounds the dials each client has waiting for an agent's
// answer. The zero value is ready; entries go when their count drops to 0.
type clientLimit struct {
	mu sync.Mutex
	n  map[string]int
}

// acquire takes one of max places of client; ok is false when all are
// taken (pending says how many). release gives the place back (once).
func (l *clientLimit) acquire(client string, max int) (release func(), pending int, ok bool) {
	if max <= 0 {
		max = DefaultMaxPendingPerClient
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = map[string]int{}
	}
	if l.n[client] >= max {
		return nil, l.n[client], false
	}
	l.n[client]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.n[client]--; l.n[client] <= 0 {
				delete(l.n, client)
			}
		})
	}, 0, true
}
