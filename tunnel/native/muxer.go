package native

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"isthmus.dev/tunnel/idle"
	"isthmus.dev/tunnel/native/mux"
)

// muxSession is the session layer under a link's TLS: hashicorp/yamux's
// session (the default) or package mux's, which speaks the same frames
// (Config.Mux). The native link uses only this much of either.
type muxSession interface {
	OpenStream() (muxStream, error)
	// OpenStreamWith opens a stream and writes first on it (in one
	// write with the SYN where the session layer can); opened gets the
	// stream before first is written. On an error once opened was
	// called, the caller closes the stream.
	OpenStreamWith(first []byte, opened func(muxStream)) (muxStream, error)
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

// asStream returns a library's stream as a muxStream: no stream (a nil
// interface, not a nil pointer in one) when there is an error.
func asStream[S muxStream](st S, err error) (muxStream, error) {
	if err != nil {
		return nil, err
	}
	return st, nil
}

// yamuxSession adapts *yamux.Session to muxSession.
type yamuxSession struct{ *yamux.Session }

func (s yamuxSession) OpenStream() (muxStream, error)   { return asStream(s.Session.OpenStream()) }
func (s yamuxSession) AcceptStream() (muxStream, error) { return asStream(s.Session.AcceptStream()) }

func (s yamuxSession) OpenStreamWith(first []byte, opened func(muxStream)) (muxStream, error) {
	st, err := s.Session.OpenStream()
	if err != nil {
		return nil, err
	}
	opened(st)
	if _, err := st.Write(first); err != nil {
		return nil, err
	}
	return st, nil
}

// isthmusSession adapts *mux.Session to muxSession.
type isthmusSession struct{ *mux.Session }

func (s isthmusSession) OpenStream() (muxStream, error)   { return asStream(s.Session.OpenStream()) }
func (s isthmusSession) AcceptStream() (muxStream, error) { return asStream(s.Session.AcceptStream()) }

func (s isthmusSession) OpenStreamWith(first []byte, opened func(muxStream)) (muxStream, error) {
	return asStream(s.Session.OpenStreamWith(first, func(st *mux.Stream) { opened(st) }))
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

// linkConn is the link's TLS connection as a session layer uses it
// (under frameWriter for yamux, batchConn for mux). Reads pass through,
// keeping the error that ended them: the session ends on it and reports
// only that it ended, while the cause (a TLS alert from the peer, say) is
// what a log must show.
type linkConn struct {
	net.Conn
	raw     *RawConn // under the TLS, or nil (a connection without one)
	readErr atomic.Pointer[error]
}

// init sets l over c, and finds the RawConn under its TLS.
func (l *linkConn) init(c net.Conn) {
	l.Conn = c
	if tc, ok := c.(*tls.Conn); ok {
		l.raw, _ = tc.NetConn().(*RawConn)
	}
}

func (l *linkConn) Read(p []byte) (int, error) {
	n, err := l.Conn.Read(p)
	if err != nil && err != idle.ErrIdle { // ErrIdle ends no reading
		cause := err // a copy: &err would put every Read's err on the heap
		l.readErr.CompareAndSwap(nil, &cause)
	}
	return n, err
}

// EnableIdle, ReadIdle and WaitReadable let a session's reader leave while
// the link is quiet (mux.IdleConn): see RawConn's.
func (l *linkConn) EnableIdle() bool {
	return l.raw != nil && l.raw.EnableIdle()
}

func (l *linkConn) ReadIdle(on bool) { l.raw.ReadIdle(on) }

func (l *linkConn) WaitReadable(resume func()) (bool, error) { return l.raw.WaitReadable(resume) }

// cause is the error that ended reading, or nil.
func (l *linkConn) cause() error {
	if e := l.readErr.Load(); e != nil {
		return *e
	}
	return nil
}

// batchConn is the link's TLS connection as package mux writes to it: mux
// writes a whole batch of frames in one Write, which TLS cuts into
// records; inside RawConn's batch those records leave in one system call.
type batchConn struct{ linkConn }

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{}
	b.init(c)
	return b
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
