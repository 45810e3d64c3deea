package native

import (
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// muxSession is the multiplexer under a link's TLS: hashicorp/yamux's
// session, the default. The native link uses only this much of it, so
// that another implementation of the same frames can take its place.
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

// newMux starts the session of one end over conn (the frame writer over
// the link's TLS): client on the agent, server on the proxy-server.
func newMux(conn io.ReadWriteCloser, client bool, yc *yamux.Config) (muxSession, error) {
	var ys *yamux.Session
	var err error
	if client {
		ys, err = yamux.Client(conn, yc)
	} else {
		ys, err = yamux.Server(conn, yc)
	}
	if err != nil {
		return nil, err
	}
	return yamuxSession{ys}, nil
}
