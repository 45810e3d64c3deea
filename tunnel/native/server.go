package native

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
)

// Hello is what an agent says about itself when it connects.
type Hello struct {
	AgentID     string
	Identifiers string
	Token       string
}

// ServerOptions configure the server end.
type ServerOptions struct {
	ServerID    string
	ServerCount int
	Config      Config
	Log         *slog.Logger
	// Check, if set, may refuse an agent (bad identifiers, failed auth);
	// its error is sent to the agent.
	Check func(ctx context.Context, h Hello) error
}

// ServerLink is the proxy-server's end of a native link. It implements
// link.Dialer.
type ServerLink struct {
	*session
	hello    Hello
	draining atomic.Bool
}

// serverAcceptBacklog: see Accept.
const serverAcceptBacklog = 256

// Accept runs the server side of the handshake on conn (a TLS connection
// that negotiated ALPN). It owns conn from the call on.
func Accept(ctx context.Context, conn net.Conn, o ServerOptions) (*ServerLink, error) {
	// The server accepts one stream, the control stream, but yamux sizes
	// both its accept queue and its bound on opened streams the agent has
	// not acknowledged yet by AcceptBacklog, and allocates the queue with
	// every session: 256 keeps an idle agent's session small (2 KiB, not
	// 32) while allowing 256 dials in flight before the agent's accept
	// loop acknowledges them (it does at once: a round trip).
	ys, _, err := newMux(conn, false, o.Config, serverAcceptBacklog)
	if err != nil {
		conn.Close()
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, o.Config.handshakeTimeout())
	defer cancel()
	stop := context.AfterFunc(hctx, func() { _ = ys.Close() })
	defer stop()
	ctrl, err := ys.AcceptStream()
	if err != nil {
		ys.Close()
		return nil, fmt.Errorf("native link: no control stream: %w", expired(hctx, err))
	}
	m, err := readCtl(ctrl, o.Config.MaxControlMessage)
	if err == nil && (m.T != msgHello || m.AgentID == "") {
		err = fmt.Errorf("%w: want hello with an agentID first, got %q", ErrProtocol, m.T)
	}
	if err != nil {
		if errors.Is(err, ErrControlTooLarge) {
			refuse(ys, ctrl, "hello refused: "+err.Error())
		}
		ys.Close()
		return nil, fmt.Errorf("native link: hello: %w", expired(hctx, err))
	}
	h := Hello{AgentID: m.AgentID, Identifiers: m.Identifiers, Token: m.Token}
	if o.Check != nil {
		if err := o.Check(hctx, h); err != nil {
			refuse(ys, ctrl, err.Error())
			ys.Close()
			return nil, fmt.Errorf("native link: agent %s refused: %w", h.AgentID, err)
		}
	}
	if err := writeCtl(ctrl, ctl{T: msgWelcome, Version: Version, ServerID: o.ServerID, ServerCount: o.ServerCount}); err != nil {
		ys.Close()
		return nil, fmt.Errorf("native link: welcome: %w", err)
	}
	if !stop() {
		return nil, fmt.Errorf("native link: handshake: %w", hctx.Err())
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ServerLink{session: newSession(ys, ctrl, log.With("agent", h.AgentID), o.Config), hello: h}, nil
}

// expired adds the handshake context's error to err when the handshake
// ran out of time (the session was closed under the read), so that callers
// can tell a slow agent (errors.Is context.DeadlineExceeded).
func expired(hctx context.Context, err error) error {
	if cerr := hctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

// refuse tells the agent why it is refused, and lets it hang up first so
// the reason arrives (closing the session at once may drop it).
func refuse(ys muxSession, ctrl net.Conn, reason string) {
	if werr := writeCtl(ctrl, ctl{T: msgRefuse, Error: limits.ClipTo(reason, 1024)}); werr == nil {
		_ = ctrl.Close()
		select {
		case <-ys.CloseChan():
		case <-time.After(2 * time.Second):
		}
	}
}

// Hello is what the agent said when it connected.
func (l *ServerLink) Hello() Hello { return l.hello }

// Run serves the control stream until the link or ctx ends, then closes the
// session; every connection of the link fails.
func (l *ServerLink) Run(ctx context.Context) error {
	return l.run(ctx, l.onMsg)
}

// Start serves the link as Run does, but returns at once and calls done
// with Run's error once the link has ended. With package mux at this end,
// the control stream is read only when it has bytes, so that an idle link
// holds no goroutine (with yamux, a goroutine runs Run).
func (l *ServerLink) Start(ctx context.Context, done func(error)) {
	l.start(ctx, l.onMsg, done)
}

// onMsg handles the agent's control messages: only drain.
func (l *ServerLink) onMsg(m ctl) error {
	if m.T != msgDrain {
		return fmt.Errorf("%w: unexpected %q from the agent", ErrProtocol, m.T)
	}
	if !l.draining.Swap(true) {
		l.log.Info("agent is draining; new dials go to other agents")
	}
	return nil
}

// Done is closed when the link has ended.
func (l *ServerLink) Done() <-chan struct{} { return l.done() }

// Draining reports whether the agent asked to be drained.
func (l *ServerLink) Draining() bool { return l.draining.Load() }

// Active is the number of live tunneled connections.
func (l *ServerLink) Active() int { return l.active() }

// Dial asks the agent to dial address. ctx bounds the dial only: when it
// ends first, the stream is closed, which cancels the agent's dial.
func (l *ServerLink) Dial(ctx context.Context, address string) (net.Conn, error) {
	fail := func(r link.Reason, err error) error {
		return &link.DialError{Address: address, Agent: l.hello.AgentID, Reason: r, Err: err}
	}
	hdr, err := dialHeader(address)
	if err != nil {
		return nil, fail(link.ReasonError, err)
	}
	// Tracked before the request leaves: the agent's answer, or its
	// abort on the control stream, may come at once.
	var c *streamConn
	st, err := l.ys.OpenStreamWith(hdr, func(st muxStream) { c = l.track(st) })
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, fail(link.ReasonLinkClosed, fmt.Errorf("%w: %w", link.ErrLinkClosed, err))
	}
	expired := context.AfterFunc(ctx, func() { _ = st.SetReadDeadline(time.Unix(1, 0)) })
	code, msg, err := readAnswer(st)
	if !expired() || err != nil {
		c.Close() // FIN before an answer: the agent cancels its dial
		switch {
		case ctx.Err() != nil:
			r := link.ReasonCancelled
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				r = link.ReasonTimeout
			}
			return nil, fail(r, fmt.Errorf("no answer from agent: %w", ctx.Err()))
		case errors.Is(err, ErrProtocol):
			return nil, fail(link.ReasonError, err)
		}
		return nil, fail(link.ReasonLinkClosed, fmt.Errorf("%w: %w", link.ErrLinkClosed, err))
	}
	_ = st.SetReadDeadline(time.Time{})
	if code != 0 {
		c.Close()
		return nil, fail(answerReasons[code], errors.New(msg))
	}
	return c.public(), nil
}
