package frontend

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
)

// Defaults of the CONNECT request's bounds (--connect-max-header-bytes,
// --connect-header-timeout). kube-apiserver's request is about 60 bytes,
// sent at once.
const (
	DefaultMaxHeaderBytes = 4 << 10
	DefaultHeaderTimeout  = 10 * time.Second
)

// Connect serves HTTP CONNECT as k8s.io/apiserver's egress dialer speaks it:
// "200" only once the backend dial succeeded, nothing buffered after the
// header, and one plain-text line for every failure (502 refused or
// unreachable, 504 dial timeout, 503 no agent or every agent busy, 403
// refused by the agent's destination policy, 405 not CONNECT, 400
// malformed, 408 header too slow, 429 too many pending dials from this
// client, 431 header too large). A request is never echoed.
type Connect struct {
	Dialer      Dialer
	DialTimeout time.Duration // 0 = DefaultDialTimeout
	// MaxHeaderBytes bounds the request header read (0 = DefaultMaxHeaderBytes);
	// a larger one is answered 431 after that many bytes.
	MaxHeaderBytes int
	// HeaderTimeout bounds the time from accept to the end of the header,
	// the TLS handshake of the TCP frontend included (0 =
	// DefaultHeaderTimeout); a slower client is answered 408.
	HeaderTimeout time.Duration
	// MaxPendingPerClient bounds the dials one client (clientOf) may have
	// waiting for an agent's answer (0 = DefaultMaxPendingPerClient); more
	// are answered 429.
	MaxPendingPerClient int
	Log                 *slog.Logger
	Limits              *limits.Hits // counts and logs the bounds hit; nil: neither
	Tracker             *Tracker     // optional
	OnDial              func(frontend string, reason link.Reason, took time.Duration)

	clients clientLimit
	mu      sync.Mutex
	conns   map[net.Conn]func() // live connections, and how to close each (nil: its Close)
	closed  bool
	wg      sync.WaitGroup
}

// Serve accepts connections on ln until ctx ends or ln fails, then closes ln.
// Connections already accepted go on; Close ends them.
func (s *Connect) Serve(ctx context.Context, ln net.Listener) error {
	if s.Limits == nil { // still log, rate limited
		s.Limits, _ = limits.New(limits.Config{Log: s.Log})
	}
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() { // e.g. EMFILE: back off, as net/http does
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.Log.Warn("accept failed; retrying", "err", err, "in", delay)
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("http-connect frontend: accept: %w", err)
		}
		delay = 0
		if !s.track(c) {
			_ = c.Close()
			return nil
		}
		go s.handle(c)
	}
}

func (s *Connect) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]func())
	}
	s.conns[c] = nil
	s.wg.Add(1)
	return true
}

func (s *Connect) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// closeWith makes closer the way Close ends c (an asynchronous splice must
// close its socket itself); false if Close has begun.
func (s *Connect) closeWith(c net.Conn, closer func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = closer
	return true
}

// Close ends every live connection and waits for their goroutines (and
// their asynchronous splices).
func (s *Connect) Close() error {
	s.mu.Lock()
	s.closed = true
	for c, closer := range s.conns {
		if closer != nil {
			closer()
		} else {
			_ = c.Close()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Connect) handle(c net.Conn) {
	tracked := func() {}
	if s.Tracker != nil {
		tracked = s.Tracker.Add()
	}
	end := func() {
		tracked()
		s.untrack(c)
	}
	client := clientOf(c)
	// The setup (the request, the dial) grows this goroutine's stack, and
	// this goroutine ends once the connection is set up.
	tc := s.connect(c, client)
	if tc == nil {
		end()
		return
	}
	finished := func(res splice.Result) {
		s.Log.Debug("connection finished", "client", client, "toBackend", res.AtoB, "fromBackend", res.BtoA, "err", res.Err)
		end()
	}
	// A tunneled connection that can tell when it has bytes (the native
	// link over --native-mux=isthmus) and a socket client are spliced
	// with no goroutine while idle. This goroutine copies the client's
	// first bytes (they follow the answer at once) and ends when the
	// client is idle.
	if as, ok := splice.NewAsync(c, tc); ok {
		if !s.closeWith(c, as.Close) {
			as.Close() // Close has begun: c is not served
			end()
			return
		}
		as.Run(finished)
		return
	}
	// Otherwise the copy, which lasts the connection's whole life and
	// mostly waits, runs on a goroutine whose stack starts small.
	go func() { finished(splice.Splice(c, tc)) }()
}

// connect reads the CONNECT request, dials, and answers. It returns the
// tunneled connection, or nil after it answered an error and closed c.
func (s *Connect) connect(c net.Conn, client string) net.Conn {
	req, br, ok := s.readRequest(c, client)
	if !ok {
		return nil
	}
	defer putReader(br) // the watch (watchHangup) ends before connect returns
	if req.Method != http.MethodConnect {
		s.refuse(c, http.StatusMethodNotAllowed, "only CONNECT is served here, got "+limits.Clip(req.Method))
		return nil
	}
	address := req.Host
	log := s.Log.With("frontend", "http-connect", "address", limits.Clip(address), "client", client)
	release := s.admit(c, client, address)
	if release == nil {
		return nil
	}
	defer release()

	timeout := s.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// A client that hangs up during the dial cancels it.
	watchDone := watchHangup(c, br, cancel)
	start := time.Now()
	tc, err := s.Dialer.Dial(ctx, address)
	watchDone()
	cancel() // ctx bounds the dial only: its timer goes now, not with the connection
	took := time.Since(start)
	if err != nil {
		reason := link.ReasonOf(err)
		if s.OnDial != nil {
			s.OnDial("http-connect", reason, took)
		}
		log.Info("dial failed", "reason", reason, "err", err, "took", took)
		reply(c, statusFor(reason), err.Error())
		_ = c.Close()
		return nil
	}
	if s.OnDial != nil {
		s.OnDial("http-connect", "", took)
	}
	_ = c.SetReadDeadline(time.Time{})
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		_ = c.Close()
		_ = tc.Close()
		return nil
	}
	// Bytes the client sent after its header belong to the tunnel.
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := tc.Write(b); err != nil {
			_ = c.Close()
			_ = tc.Close()
			return nil
		}
	}
	log.Debug("connected", "took", took)
	return tc
}

// admit checks the CONNECT target and takes one of its client's
// pending-dial places; release gives it back. Refused, it answered, closed
// c, and returns nil.
func (s *Connect) admit(c net.Conn, client, address string) (release func()) {
	if err := checkAddress(address); err != nil {
		s.Limits.Log().Log(slog.LevelInfo, "connect_bad_target", "CONNECT refused: bad target", "frontend", "http-connect", "client", client, "err", limits.Clip(err.Error()))
		s.refuse(c, http.StatusBadRequest, limits.Clip(err.Error()))
		return nil
	}
	release, pending, ok := s.clients.acquire(client, s.MaxPendingPerClient)
	if !ok {
		s.Limits.Hit(limits.PendingDialsClient, "dial refused: this frontend client has too many dials waiting for an agent's answer; raise --max-pending-dials-per-client if that is its normal load, else look at why agents answer slowly (dial_duration_seconds)",
			"frontend", "http-connect", "client", client, "address", limits.Clip(address), "pending", pending)
		if s.OnDial != nil {
			s.OnDial("http-connect", link.ReasonBusy, 0)
		}
		s.refuse(c, http.StatusTooManyRequests, fmt.Sprintf("too many pending dials: this client has %d dials waiting for an agent's answer (proxy-server --max-pending-dials-per-client)", pending))
		return nil
	}
	return release
}

// hangupWatchDelay is how long a dial runs before a goroutine watches its
// client for a hang-up: most dials are answered sooner, and then cost no
// goroutine, read or deadline for it. A client that hung up meanwhile is
// seen as soon as the watch starts.
const hangupWatchDelay = 5 * time.Millisecond

// watchHangup cancels the dial when the client closes its connection while
// we dial (from hangupWatchDelay on). Bytes it sends early stay in br. The
// returned func stops watching.
func watchHangup(c net.Conn, br *bufio.Reader, cancel context.CancelFunc) (stop func()) {
	if br.Buffered() > 0 {
		return func() {}
	}
	// Clear the header deadline here, not in the watcher: stop may run
	// before the watcher does, and its wake-up deadline must not be
	// overwritten, or Peek would block until the client gives up.
	_ = c.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	t := time.AfterFunc(hangupWatchDelay, func() {
		defer close(done)
		if _, err := br.Peek(1); err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				cancel()
			}
		}
	})
	return func() {
		if t.Stop() {
			return // the watch never started
		}
		// Started: a deadline in the past wakes the Peek, or makes it
		// return at once if it has not begun.
		_ = c.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = c.SetReadDeadline(time.Time{})
	}
}

func statusFor(r link.Reason) int {
	switch r {
	case link.ReasonNoAgent, link.ReasonBusy:
		return http.StatusServiceUnavailable
	case link.ReasonTimeout:
		return http.StatusGatewayTimeout
	case link.ReasonPolicy:
		return http.StatusForbidden
	}
	return http.StatusBadGateway
}

// reply answers a CONNECT that failed. The reason goes into the status line
// too (as upstream's "currently no tunnels available" does): kube-apiserver's
// egress dialer shows the status line and not the body.
func reply(c net.Conn, code int, msg string) {
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	msg = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, msg)
	body := msg + "\n"
	fmt.Fprintf(c, "HTTP/1.1 %d %s: %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), msg, len(body), body)
}
