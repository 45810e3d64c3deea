package native

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"isthmus.dev/tunnel/native/mux"
)

// muxSession is the session layer under a link's TLS: hashicorp/yamux's
// session (the default) or package mux's, which speaks the same frames
// (Config.Mux). The native link uses only this much of either.
type muxSession interface {
	OpenStream() (muxStream, error)
	AcceptStream() (muxStream, error)
	Ping() (time.Duration, error)
	Close() error
	IsClosed() bool
	CloseChan() <-chan struct{}
}

// muxStream is one stream of a muxSession: a net.Conn whose Close is a
// half-close (FIN; reads go on until the peer's FIN), whose Read of an
// empty slice waits for data without taking any, and which has an ID
// shared by both ends.
type muxStream interface {
	net.Conn
	StreamID() uint32
}

// yamuxSession adapts *yamux.Session to muxSession.
type yamuxSession struct{ *yamux.Session }

func (s yamuxSession) OpenStream() (muxStream, error) {
	st, err := s.Session.OpenStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (s yamuxSession) AcceptStream() (muxStream, error) {
	st, err := s.Session.AcceptStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

// isthmusSession adapts *mux.Session to muxSession.
type isthmusSession struct{ *mux.Session }

func (s isthmusSession) OpenStream() (muxStream, error) {
	st, err := s.Session.OpenStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (s isthmusSession) AcceptStream() (muxStream, error) {
	st, err := s.Session.AcceptStream()
	if err != nil {
		return nil, err
	}
	return st, nil
}

// newMux starts the session layer of one end over conn (the link's TLS
// connection): the client on the agent, the server on the proxy-server.
// backlog, if positive, replaces the accept backlog of cfg. cause is the
// error that ended reading conn (a TLS alert from the peer, say), which
// the session reports only as its end.
func newMux(conn net.Conn, client bool, cfg Config, backlog int) (s muxSession, cause func() error, err error) {
	yc := cfg.yamux()
	if backlog > 0 {
		yc.AcceptBacklog = backlog
	}
	switch cfg.Mux {
	case "", MuxYamux:
		fw := newFrameWriter(conn)
		var ys *yamux.Session
		if client {
			ys, err = yamux.Client(fw, yc)
		} else {
			ys, err = yamux.Server(fw, yc)
		}
		if err != nil {
			return nil, nil, err
		}
		return yamuxSession{ys}, fw.cause, nil
	case MuxIsthmus:
		bc := newBatchConn(conn)
		mc := &mux.Config{AcceptBacklog: yc.AcceptBacklog, MaxStreamWindowSize: yc.MaxStreamWindowSize, ConnectionWriteTimeout: yc.ConnectionWriteTimeout}
		var ms *mux.Session
		if client {
			ms, err = mux.Client(bc, mc)
		} else {
			ms, err = mux.Server(bc, mc)
		}
		if err != nil {
			return nil, nil, err
		}
		return isthmusSession{ms}, bc.cause, nil
	}
	return nil, nil, CheckMux(cfg.Mux)
}

// batchConn is the link's TLS connection as package mux writes to it: mux
// writes a whole batch of frames in one Write, which TLS cuts into
// records; inside RawConn's batch those records leave in one system call.
// Reads pass through, keeping the error that ended them (see cause).
type batchConn struct {
	net.Conn
	raw     *RawConn // under the TLS, or nil (then writes go straight through)
	readErr atomic.Pointer[error]
}

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{Conn: c}
	if tc, ok := c.(*tls.Conn); ok {
		b.raw, _ = tc.NetConn().(*RawConn)
	}
	return b
}

func (b *batchConn) Read(p []byte) (int, error) {
	n, err := b.Conn.Read(p)
	if err != nil {
		cause := err // a copy: &err would put every Read's err on the heap
		b.readErr.CompareAndSwap(nil, &cause)
	}
	return n, err
}

func (b *batchConn) Write(p []byte) (int, error) {
	if b.raw == nil {
		return b.Conn.Write(p)
	}
	var n int
	err := b.raw.batch(func() error {
		var err error
		n, err = b.Conn.Write(p)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("write to the link: %w", err)
	}
	return n, nil
}

// cause is the error that ended reading, or nil.
func (b *batchConn) cause() error {
	if e := b.readErr.Load(); e != nil {
		return *e
	}
	return nil
}
