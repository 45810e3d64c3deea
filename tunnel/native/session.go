package native

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"isthmus.dev/tunnel/link"
)

// session is what both ends share: the yamux session, the control stream,
// and the live connections by stream id.
type session struct {
	ys     muxSession
	ctrl   net.Conn
	log    *slog.Logger
	maxCtl int // bound of a control message received (Config.MaxControlMessage)

	ctrlMu sync.Mutex // one writer at a time on the control stream
	mu     sync.Mutex
	conns  map[uint32]*streamConn
}

func newSession(ys muxSession, ctrl net.Conn, log *slog.Logger, cfg Config) *session {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &session{ys: ys, ctrl: ctrl, log: log, maxCtl: cfg.MaxControlMessage, conns: map[uint32]*streamConn{}}
	s.keepAlive(cfg.keepAlive())
	return s
}

// keepAlive pings the peer every interval (up to a fifth sooner, at
// random, so that links made together do not ping together; never later,
// so a dead path is still noticed within KeepAlive + WriteTimeout) and
// closes the session when a ping gets no answer within yamux's
// ConnectionWriteTimeout, as yamux's own keepalive does. Between pings it
// holds a timer, not a goroutine.
func (s *session) keepAlive(interval time.Duration) {
	next := func() time.Duration {
		return interval - rand.N(interval/5+1)
	}
	var t *time.Timer
	t = time.AfterFunc(next(), func() {
		if s.ys.IsClosed() {
			return
		}
		if _, err := s.ys.Ping(); err != nil {
			if !s.ys.IsClosed() {
				s.log.Warn("closing the link: the peer did not answer a keepalive ping; the agent reconnects. "+
					"If this repeats, check the path between agent and proxy-server (a firewall or load balancer dropping idle or long connections, packet loss)", "err", err)
				_ = s.ys.Close()
			}
			return
		}
		t.Reset(next())
	})
}

func (s *session) writeCtl(m ctl) error {
	s.ctrlMu.Lock()
	defer s.ctrlMu.Unlock()
	if err := writeCtl(s.ctrl, m); err != nil {
		return fmt.Errorf("%w: control stream: %w", link.ErrLinkClosed, err)
	}
	return nil
}

// sendAbort tells the peer this side dropped stream id: closed while the
// peer may still send, or cut (see streamConn).
func (s *session) sendAbort(id uint32, cut bool) {
	m := ctl{T: msgAbort, Stream: id}
	if cut {
		m.Error = abortCut
	}
	// Off the caller's path: a control write can wait on the session.
	go func() { _ = s.writeCtl(m) }()
}

func (s *session) track(st muxStream) *streamConn {
	c := &streamConn{muxStream: st, sess: s}
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

func (s *session) abort(id uint32, cut bool) {
	s.mu.Lock()
	c := s.conns[id]
	s.mu.Unlock()
	if c != nil {
		c.peerAborted(cut)
	}
}

// endCuts ends the streams this side cut that still wait for the peer's
// answer: the session is gone, so is the answer.
func (s *session) endCuts() {
	s.mu.Lock()
	conns := make([]*streamConn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.endCut()
	}
}

// readControl serves the control stream until it ends; onMsg handles what
// is not common to both ends. An unknown or malformed message ends the
// session.
func (s *session) readControl(onMsg func(ctl) error) error {
	for {
		if err := s.readOne(onMsg); err != nil {
			return err
		}
	}
}

// readOne reads and handles one control message.
func (s *session) readOne(onMsg func(ctl) error) error {
	m, err := readCtl(s.ctrl, s.maxCtl)
	if err != nil {
		return err
	}
	if m.T == msgAbort {
		s.abort(m.Stream, m.Error == abortCut)
		return nil
	}
	return onMsg(m)
}

// run serves the session until ctx ends or the session or its control
// stream fails, then closes everything. The control stream is read on the
// caller's goroutine: a link costs no goroutine of its own beyond yamux's.
func (s *session) run(ctx context.Context, onMsg func(ctl) error) error {
	stop := context.AfterFunc(ctx, func() { _ = s.ys.Close() })
	return s.finish(ctx, stop, s.readControl(onMsg))
}

// start serves the session as run does, but returns at once, and calls
// done with run's error once the session has ended. On a control stream
// that calls back when it has bytes (package mux), messages are read only
// then: an idle link holds no goroutine. Otherwise a goroutine runs run.
func (s *session) start(ctx context.Context, onMsg func(ctl) error, done func(error)) {
	rn, ok := s.ctrl.(readNotifier)
	if !ok {
		go func() { done(s.run(ctx, onMsg)) }()
		return
	}
	stop := context.AfterFunc(ctx, func() { _ = s.ys.Close() })
	var step, resume func()
	resume = func() { go step() }
	// step reads what the control stream has, and leaves when it has
	// nothing more (the stream calls resume when it has); a message cut
	// in the middle is waited for here.
	step = func() {
		for !rn.NotifyReadable(resume) {
			if err := s.readOne(onMsg); err != nil {
				done(s.finish(ctx, stop, err))
				return
			}
		}
	}
	step()
}

// finish closes the session after reading its control stream ended with
// err, and returns why the link ended.
func (s *session) finish(ctx context.Context, stop func() bool, err error) error {
	switch {
	case !stop():
		err = context.Cause(ctx)
	case s.ys.IsClosed():
		err = link.ErrLinkClosed
	}
	_ = s.ys.Close()
	s.endCuts()
	if errors.Is(err, ErrProtocol) && !errors.Is(err, ErrControlTooLarge) { // the owner counts and logs that bound
		s.log.Warn("closing the link: the peer broke the protocol", "err", err)
	}
	return err
}

func (s *session) done() <-chan struct{} { return s.ys.CloseChan() }

// Close ends the link's session (and every connection on it).
func (s *session) Close() error { return s.ys.Close() }
