package native

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
)

// Welcome is what the server answers to a hello.
type Welcome struct {
	ServerID    string
	ServerCount int
}

// ErrRefused is returned when the server refused the agent.
var ErrRefused = errors.New("native link: refused by the server")

// AgentOptions configure the agent end.
type AgentOptions struct {
	Config      Config
	Log         *slog.Logger
	DialTimeout time.Duration // backend dial bound; 0 = 10 s
	// OnSplice and OnDial observe connections and dials, as on the ANP link.
	OnSplice func(address string, r splice.Result)
	OnDial   func(reason link.Reason, took time.Duration)
}

// AgentLink is the proxy-agent's end of a native link.
type AgentLink struct {
	*session
	opts AgentOptions
	wg   sync.WaitGroup
}

// Connect runs the agent side of the handshake on conn (a TLS connection
// that negotiated ALPN). It owns conn from the call on.
func Connect(ctx context.Context, conn net.Conn, h Hello, o AgentOptions) (*AgentLink, Welcome, error) {
	var w Welcome
	ys, err := yamux.Client(newFrameWriter(conn), o.Config.yamux())
	if err != nil {
		conn.Close()
		return nil, w, err
	}
	hctx, cancel := context.WithTimeout(ctx, o.Config.handshakeTimeout())
	defer cancel()
	stop := context.AfterFunc(hctx, func() { _ = ys.Close() })
	defer stop()
	ctrl, err := ys.OpenStream()
	if err == nil {
		err = writeCtl(ctrl, ctl{T: msgHello, Version: Version, AgentID: h.AgentID, Identifiers: h.Identifiers, Token: h.Token})
	}
	var m ctl
	if err == nil {
		m, err = readCtl(ctrl)
	}
	switch {
	case err != nil:
		ys.Close()
		if hctx.Err() != nil {
			err = hctx.Err()
		}
		return nil, w, fmt.Errorf("native link: handshake: %w", err)
	case m.T == msgRefuse:
		ys.Close()
		return nil, w, fmt.Errorf("%w: %s", ErrRefused, m.Error)
	case m.T != msgWelcome || m.ServerID == "" || m.ServerCount < 1:
		ys.Close()
		return nil, w, fmt.Errorf("%w: want welcome with serverID and serverCount, got %q", ErrProtocol, m.T)
	}
	if !stop() {
		return nil, w, fmt.Errorf("native link: handshake: %w", hctx.Err())
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w = Welcome{ServerID: m.ServerID, ServerCount: m.ServerCount}
	return &AgentLink{session: newSession(ys, ctrl, log.With("server", w.ServerID)), opts: o}, w, nil
}

// Done is closed when the link has ended.
func (l *AgentLink) Done() <-chan struct{} { return l.done() }

// Active is the number of live tunneled connections.
func (l *AgentLink) Active() int { return l.active() }

// Drain tells the server to prefer other agents for new dials.
func (l *AgentLink) Drain() error { return l.writeCtl(ctl{T: msgDrain}) }

// Run serves the server's dials with dial until the link or ctx ends. On
// return every dial and connection has finished.
func (l *AgentLink) Run(ctx context.Context, dial link.DialFunc) error {
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			st, err := l.ys.AcceptStream()
			if err != nil {
				return
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				l.serve(ctx, st, dial)
			}()
		}
	}()
	err := l.run(ctx, func(m ctl) error {
		return fmt.Errorf("%w: unexpected %q from the server", ErrProtocol, m.T)
	})
	<-accepted
	l.wg.Wait()
	return err
}

// serve handles one data stream: header, dial (cancelled if the server
// closes the stream first), answer, then splice.
func (l *AgentLink) serve(ctx context.Context, st *yamux.Stream, dial link.DialFunc) {
	c := l.track(st)
	type dialed struct {
		address string
		backend net.Conn
	}
	d := splice.OnOwnStack(func() (d dialed) {
		d.address, d.backend = l.connect(ctx, c, st, dial)
		return d
	})
	if d.backend == nil {
		return
	}
	res := splice.Splice(c, d.backend)
	if l.opts.OnSplice != nil {
		l.opts.OnSplice(d.address, res)
	}
	l.log.Debug("connection finished", "stream", st.StreamID(), "toBackend", res.AtoB, "fromBackend", res.BtoA, "err", res.Err)
}

// connect reads the dial header, dials (cancelled if the server closes the
// stream first) and answers. It returns the address and the backend
// connection, or no connection after it answered an error and closed c.
func (l *AgentLink) connect(ctx context.Context, c *streamConn, st *yamux.Stream, dial link.DialFunc) (string, net.Conn) {
	_ = st.SetReadDeadline(time.Now().Add(l.opts.Config.handshakeTimeout()))
	address, err := readHeader(st)
	if err != nil {
		l.log.Warn("bad dial header", "err", err)
		c.Close()
		return address, nil
	}
	_ = st.SetReadDeadline(time.Time{})
	log := l.log.With("stream", st.StreamID(), "address", address)

	dctx, cancel := context.WithTimeout(ctx, l.opts.DialTimeout)
	defer cancel()
	// The server sends nothing before our answer: anything it does now
	// (its FIN, an abort, the session ending) cancels the dial.
	watch := make(chan struct{})
	go func() {
		defer close(watch)
		var b [1]byte
		if _, err := c.Read(b[:]); err == nil || !isDeadline(err) {
			cancel()
		}
	}()
	start := time.Now()
	backend, err := dial(dctx, address)
	reason := link.Classify(err)
	if l.opts.OnDial != nil {
		l.opts.OnDial(reason, time.Since(start))
	}
	_ = st.SetReadDeadline(time.Unix(1, 0)) // stop the watcher
	<-watch
	_ = st.SetReadDeadline(time.Time{})
	cancelled := dctx.Err() != nil && ctx.Err() == nil && !errors.Is(dctx.Err(), context.DeadlineExceeded)
	cancel() // dctx bounds the dial only: its timer goes now, not with the connection
	switch {
	case cancelled:
		if backend != nil {
			backend.Close()
		}
		log.Debug("dial cancelled by the server")
		c.Close()
		return address, nil
	case err != nil:
		log.Info("backend dial failed", "reason", reason, "err", err, "took", time.Since(start))
		_ = writeAnswer(st, answerCode(reason), err.Error())
		_ = c.CloseWrite()
		c.Close()
		return address, nil
	}
	if err := writeAnswer(st, 0, ""); err != nil {
		backend.Close()
		c.Close()
		return address, nil
	}
	log.Debug("backend connected", "took", time.Since(start))
	return address, backend
}

func isDeadline(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
