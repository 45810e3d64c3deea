package agent

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// alertCreds are the ANP link's TLS credentials: after the handshake they
// wait for the server's first bytes before gRPC gets the connection, and
// keep a TLS alert the server sent.
//
// With TLS 1.3 the client's handshake is over before the server has
// checked the client's certificate; a server that refuses it sends an
// alert, seen at the client's first read. gRPC's first act is to write
// its preface, and that write often fails first (broken pipe): the agent
// then logged a connection failure, not that its certificate was refused.
// A gRPC server (ours and ANP's) sends its SETTINGS frame as soon as the
// connection is up, so the wait costs nothing.
type alertCreds struct {
	credentials.TransportCredentials
	alert *atomic.Pointer[net.OpError] // shared by clones
}

func newAlertCreds(tls credentials.TransportCredentials) alertCreds {
	return alertCreds{TransportCredentials: tls, alert: &atomic.Pointer[net.OpError]{}}
}

// Alert is the alert the server sent in the last handshake, if any.
func (c alertCreds) Alert() error {
	if a := c.alert.Load(); a != nil {
		return a
	}
	return nil
}

func (c alertCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		c.keep(err)
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	r := bufio.NewReader(conn)
	_, err = r.Peek(1)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		c.keep(err)
		_ = conn.Close()
		return nil, nil, err
	}
	return &peekedConn{Conn: conn, r: r}, info, nil
}

func (c alertCreds) Clone() credentials.TransportCredentials {
	return alertCreds{TransportCredentials: c.TransportCredentials.Clone(), alert: c.alert}
}

// keep stores err if it is an alert from the server.
func (c alertCreds) keep(err error) {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		c.alert.Store(oe)
	}
}

// peekedConn reads what the peek buffered, then the connection directly.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) {
	if p.r.Buffered() > 0 {
		return p.r.Read(b)
	}
	return p.Conn.Read(b)
}
