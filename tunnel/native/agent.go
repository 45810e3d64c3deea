package native

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"isthmus.dev/tunnel/link"
)

// Welcome is what the server answers to a hello.
type Welcome struct {
	ServerID    string
	ServerCount int
}

// ErrRefused is returned when the server refused the agent; the error's
// text carries the server's reason.
var ErrRefused = errors.New("native link: refused by the server")

// AgentOptions configure the agent end.
type AgentOptions struct {
	Config Config
	Log    *slog.Logger
	// PendingDials bounds the server's dial requests in flight on the
	// link: received and not yet answered (waiting for Accept, or taken
	// and dialing). Beyond it a dial is refused at once with
	// link.BusyText; 0 = link.DefaultPendingDials.
	PendingDials int
	// OnBusy, if set, is called for every dial refused by PendingDials,
	// on the link's accept loop: it must not block.
	OnBusy func()
}

// AgentLink is the proxy-agent's end of a native link: a link.Acceptor of
// the server's dials, each a yamux stream.
type AgentLink struct {
	*session
	opts AgentOptions
	reqs chan *request
	wg   sync.WaitGroup // stream readers

	hmu      sync.Mutex
	handle   func(link.Request) // ServeRequests' handler, while it runs
	handlers sync.WaitGroup     // its calls under way
	pending  atomic.Int64       // dial requests in flight (opts.PendingDials bounds it)
}

// Connect runs the agent side of the handshake on conn (a TLS connection
// that negotiated ALPN). It owns conn from the call on.
func Connect(ctx context.Context, conn net.Conn, h Hello, o AgentOptions) (*AgentLink, Welcome, error) {
	var w Welcome
	ys, cause, err := newMux(conn, true, o.Config, 0)
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
		m, err = readCtl(ctrl, o.Config.MaxControlMessage)
	}
	switch {
	case err != nil:
		ys.Close()
		if cause := cause(); cause != nil && !errors.Is(cause, io.EOF) {
			err = cause // e.g. the server's TLS alert: its verdict on our certificate
		} else if hctx.Err() != nil {
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
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w = Welcome{ServerID: m.ServerID, ServerCount: m.ServerCount}
	if o.PendingDials <= 0 {
		o.PendingDials = link.DefaultPendingDials
	}
	return &AgentLink{session: newSession(ys, ctrl, log.With("server", w.ServerID), o.Config), opts: o, reqs: make(chan *request)}, w, nil
}

// Done is closed when the link has ended.
func (l *AgentLink) Done() <-chan struct{} { return l.done() }

// Active is the number of live tunneled connections.
func (l *AgentLink) Active() int { return l.active() }

// Drain tells the server to prefer other agents for new dials.
func (l *AgentLink) Drain() error { return l.writeCtl(ctl{T: msgDrain}) }

// Run serves the control stream and takes the server's data streams until
// the link or ctx ends; then the session is closed, every connection on it
// fails, and requests not yet answered are cancelled.
func (l *AgentLink) Run(ctx context.Context) error {
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			st, err := l.ys.AcceptStream()
			if err != nil {
				return
			}
			if l.pending.Add(1) > int64(l.opts.PendingDials) {
				l.refuseBusy(st)
				continue
			}
			if l.requestNow(st) {
				continue
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				l.request(st)
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

// Accept returns the server's next dial request.
func (l *AgentLink) Accept(ctx context.Context) (link.Request, error) {
	select {
	case r := <-l.reqs:
		return r, nil
	case <-l.done():
		return nil, link.ErrLinkClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ServeRequests calls handle for each of the server's dial requests, each
// on a goroutine of its own, until the link or ctx ends; it returns once
// no call of handle is under way and none can start. A request the link
// takes on its accept loop (see requestNow) goes to its goroutine from
// there, with no hand-over through Accept. Accept is not to be used
// beside it.
func (l *AgentLink) ServeRequests(ctx context.Context, handle func(link.Request)) {
	l.hmu.Lock()
	l.handle = handle
	l.hmu.Unlock()
	defer func() {
		l.hmu.Lock()
		l.handle = nil // from here on, no dispatch starts
		l.hmu.Unlock()
		l.handlers.Wait()
	}()
	for {
		select {
		case r := <-l.reqs: // handed over before handle was set
			l.handlers.Add(1)
			go func() {
				defer l.handlers.Done()
				handle(r)
			}()
		case <-l.done():
			return
		case <-ctx.Done():
			return
		}
	}
}

// dispatch runs r on a goroutine of ServeRequests' handler, if one is
// set; false otherwise (Accept takes r).
func (l *AgentLink) dispatch(r *request) bool {
	l.hmu.Lock()
	h := l.handle
	if h != nil {
		l.handlers.Add(1)
	}
	l.hmu.Unlock()
	if h == nil {
		return false
	}
	go func() {
		defer l.handlers.Done()
		h(r)
	}()
	return true
}

// handOver gives r to Accept; false if the link ended first (r is then
// dropped: its stream closed, its count given back).
func (l *AgentLink) handOver(r *request) bool {
	select {
	case l.reqs <- r:
		return true
	case <-l.done():
		l.pending.Add(-1)
		r.cancel()
		r.c.Close()
		return false
	}
}

// refuseBusy answers a dial beyond PendingDials without reading its
// header (a flood must cost nothing but the answer) and closes the stream.
// It runs on the accept loop: a session too slow to take the answer slows
// the server's next dials, which is the point.
func (l *AgentLink) refuseBusy(st muxStream) {
	n := l.pending.Add(-1)
	// Counted before the answer leaves: whoever sees the refusal sees it
	// counted.
	if l.opts.OnBusy != nil {
		l.opts.OnBusy()
	}
	_ = writeAnswer(st, answerCode(link.ReasonError), link.BusyText(int(n)))
	_ = st.Close()
}

// request reads one data stream's dial header, hands the request to
// Accept, and then watches the stream until the request is answered: the
// server sends nothing before the answer, so anything it does meanwhile
// (its FIN, an abort, the session ending) cancels the dial. The request
// counts as pending from the stream's accept until its answer.
func (l *AgentLink) request(st muxStream) {
	c := l.track(st)
	_ = st.SetReadDeadline(time.Now().Add(l.opts.Config.handshakeTimeout()))
	address, err := readHeader(st)
	if err != nil {
		l.pending.Add(-1)
		l.log.Warn("bad dial header from the server", "stream", st.StreamID(), "err", err)
		c.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	r := &request{c: c, address: address, ctx: ctx, cancel: cancel, watched: make(chan struct{}), pending: &l.pending}
	if !l.dispatch(r) && !l.handOver(r) {
		return
	}
	defer close(r.watched)
	var b [1]byte
	if _, err := c.Read(b[:]); err == nil || !isDeadline(err) {
		cancel()
	}
}

// peekNotifier is a stream that calls back when it has something to read
// and shows what it holds without taking it (the session layer of package
// mux).
type peekNotifier interface {
	readNotifier
	Peek(p []byte) int
}

// requestNow is request without a goroutine, for a stream that calls back
// and already holds its whole dial header (the server sends it with the
// stream's SYN): the request goes to Accept from the accept loop (or, if
// nobody waits in Accept, from a goroutine that only hands it over), and
// the stream's callback, not a goroutine in Read, cancels the dial if the
// server sends anything before the answer. It returns false, having taken
// nothing, when it cannot: request takes the stream.
func (l *AgentLink) requestNow(st muxStream) bool {
	pn, ok := st.(peekNotifier)
	if !ok {
		return false
	}
	var buf [3 + maxAddress]byte
	if pn.Peek(buf[:3]) < 3 {
		return false
	}
	n := int(binary.BigEndian.Uint16(buf[1:3]))
	if buf[0] != dialMagic || n == 0 || n > maxAddress || pn.Peek(buf[:3+n]) < 3+n {
		return false // a bad header is request's to report
	}
	c := l.track(st)
	if k, _ := pn.ReadNow(buf[:3+n]); k < 3+n { // reset since the Peek
		l.pending.Add(-1)
		c.Close()
		return true
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &request{c: c, address: string(buf[3 : 3+n]), ctx: ctx, cancel: cancel, notify: pn, pending: &l.pending}
	if !pn.NotifyReadable(cancel) {
		cancel() // the server sent something already: it gave the dial up
	}
	if l.dispatch(r) {
		return true
	}
	select {
	case l.reqs <- r:
	default:
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.handOver(r)
		}()
	}
	return true
}

// request is one dial on a data stream; it implements link.Request.
type request struct {
	c       *streamConn
	address string
	ctx     context.Context
	cancel  context.CancelFunc
	watched chan struct{} // closed when the stream watcher stopped (nil with notify)
	notify  readNotifier  // the stream, when its callback watches it instead
	once    sync.Once
	pending *atomic.Int64 // the link's count of pending dials, decremented at the answer
}

func (r *request) Address() string          { return r.address }
func (r *request) Context() context.Context { return r.ctx }

// answer stops the watcher and reports whether the server still waits.
func (r *request) answer() (waiting bool) {
	if r.notify != nil {
		if !r.notify.NotifyReadable(nil) {
			r.cancel() // the server sent something: it gave the dial up
		}
	} else {
		_ = r.c.SetReadDeadline(time.Unix(1, 0))
		<-r.watched
		_ = r.c.SetReadDeadline(time.Time{})
	}
	waiting = r.ctx.Err() == nil
	r.cancel()
	return waiting
}

func (r *request) Accept(net.Conn) (net.Conn, error) {
	first := false
	var err error
	r.once.Do(func() {
		first = true
		r.pending.Add(-1)
		switch {
		case !r.answer():
			err = link.ErrDialCancelled
		default:
			if werr := writeAnswer(r.c, 0, ""); werr != nil {
				err = fmt.Errorf("%w: answer: %w", link.ErrLinkClosed, werr)
			}
		}
		if err != nil {
			r.c.Close()
		}
	})
	if !first {
		return nil, errAnswered
	}
	if err != nil {
		return nil, err
	}
	return r.c.public(), nil
}

func (r *request) Refuse(reason link.Reason, err error) {
	r.once.Do(func() {
		r.pending.Add(-1)
		if r.answer() {
			_ = writeAnswer(r.c, answerCode(reason), link.RefusalText(reason, err))
			_ = r.c.CloseWrite()
		}
		r.c.Close()
	})
}

var errAnswered = errors.New("native link: dial request answered twice")

func isDeadline(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
