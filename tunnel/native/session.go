package native

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/hashicorp/yamux"

	"isthmus.dev/tunnel/link"
)

// session is what both ends share: the yamux session, the control stream,
// and the live connections by stream id.
type session struct {
	ys   *yamux.Session
	ctrl net.Conn
	log  *slog.Logger

	ctrlMu sync.Mutex // one writer at a time on the control stream
	mu     sync.Mutex
	conns  map[uint32]*streamConn
}

func newSession(ys *yamux.Session, ctrl net.Conn, log *slog.Logger) *session {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &session{ys: ys, ctrl: ctrl, log: log, conns: map[uint32]*streamConn{}}
}

func (s *session) writeCtl(m ctl) error {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	if err := writeCtl(s.ctrl, m); err != nil {
		return fmt.Errorf("%w: control stream: %w", link.ErrLinkClosed, err)
	}
	return nil
}

func (s *session) sendAbort(id uint32) {
	// Off the caller's path: a control write can wait on the session.
	go func() { _ = s.writeCtl(ctl{T: msgAbort, Stream: id}) }()
}

func (s *session) track(st *yamux.Stream) *streamConn {
	c := &streamConn{Stream: st, sess: s}
	s.mu.Lock()
	s.conns[st.StreamID()] = c
	s.mu.Unlock()
	return c
}

func (s *session) forget(c *streamConn) {
	s.mu.Lock()
	if s.conns[c.StreamID()] == c {
		delete(s.conns, c.StreamID())
	}
	s.mu.Unlock()
}

func (s *session) active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *session) abort(id uint32) {
	s.mu.Lock()
	c := s.conns[id]
	s.mu.Unlock()
	if c != nil {
		c.peerAborted()
	}
}

// readControl serves the control stream until it ends; onMsg handles what
// is not common to both ends. An unknown or malformed message ends the
// session.
func (s *session) readControl(onMsg func(ctl) error) error {
	for {
		m, err := readCtl(s.ctrl)
		if err != nil {
			return err
		}
		switch m.T {
		case msgAbort:
			s.abort(m.Stream)
		default:
			if err := onMsg(m); err != nil {
				return err
			}
		}
	}
}

// run serves the session until ctx ends or the session or its control
// stream fails, then closes everything.
func (s *session) run(ctx context.Context, onMsg func(ctl) error) error {
	errc := make(chan error, 1)
	go func() { errc <- s.readControl(onMsg) }()
	var err error
	select {
	case err = <-errc:
		errc = nil
	case <-ctx.Done():
		err = context.Cause(ctx)
	case <-s.ys.CloseChan():
		err = link.ErrLinkClosed
	}
	_ = s.ys.Close()
	if errc != nil {
		<-errc // the control reader ends with the session
	}
	if errors.Is(err, ErrProtocol) {
		s.log.Warn("closing the link: the peer broke the protocol", "err", err)
	}
	return err
}

func (s *session) done() <-chan struct{} { return s.ys.CloseChan() }

// Close ends the link's session (and every connection on it).
func (s *session) Close() error { return s.ys.Close() }
