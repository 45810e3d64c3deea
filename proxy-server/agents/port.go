package agents

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"isthmus.dev/proxy-server/auth"
	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/ident"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/native"
)

// Port serves the agent port: one TLS listener where ALPN picks the link.
// "isthmus/1" is the native link; anything else (upstream agents offer
// "h2") goes to the gRPC server of the ANP link.
type Port struct {
	TLS    *tls.Config  // server certificate and client CAs; NextProtos are set here
	GRPC   *grpc.Server // the ANP link, built with HandshakenCreds
	Agents *Server
	Native native.Config
	// HandshakeTimeout bounds an agent's TLS handshake (0 =
	// DefaultHandshakeTimeout); a client still handshaking then is cut.
	HandshakeTimeout time.Duration
	Log              *slog.Logger
	Limits           *limits.Hits // counts and logs the bounds hit; nil: neither
}

// NextProtos are the ALPN protocols of the agent port, preferred first.
var NextProtos = []string{native.ALPN, "h2"}

// Serve accepts agents on ln until ctx ends, then closes ln and every
// native link, and waits for them. The gRPC server is stopped by its owner.
func (p *Port) Serve(ctx context.Context, ln net.Listener) error {
	cfg := p.TLS.Clone()
	cfg.NextProtos = NextProtos
	grpcLn := newChanListener(ln.Addr())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = p.GRPC.Serve(grpcLn)
	}()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close(); _ = grpcLn.Close() })
	defer stop()
	var (
		err   error
		delay time.Duration
	)
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil { // e.g. EMFILE: back off, as net/http does
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				p.Log.Warn("agent port: accept failed; retrying", "err", err, "in", delay)
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
				}
			}
			break
		}
		delay = 0
		wg.Add(1)
		go func() {
			// WrapRaw lets a native link batch its TLS records into few
			// writes; the ANP link's writes pass straight through.
			tc := tls.Server(native.WrapRaw(c), cfg)
			if !p.handshake(ctx, tc, grpcLn) {
				wg.Done()
				return
			}
			// The link outlives this goroutine (ServeNative).
			p.Agents.ServeNative(ctx, tc, p.Native, wg.Done)
		}()
	}
	_ = grpcLn.Close()
	wg.Wait()
	if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// handshake completes an agent connection's TLS handshake. It reports
// true for a native link, for the caller to serve; it hands an ANP link to
// the gRPC server, and closes a connection that failed.
func (p *Port) handshake(ctx context.Context, tc *tls.Conn, grpcLn *chanListener) (isNative bool) {
	timeout := p.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	switch {
	case err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		p.Limits.Hit(limits.AgentHandshakeTime, "agent port: TLS handshake not finished within --agent-handshake-timeout; cut (a slow or idle client, or a port scan)",
			"remote", tc.RemoteAddr().String(), "timeout", timeout)
		_ = tc.Close()
		return
	case err != nil:
		p.Log.Info("agent TLS handshake failed", "remote", tc.RemoteAddr().String(), "err", err)
		_ = tc.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == native.ALPN {
		return true
	}
	if !grpcLn.deliver(tc) {
		_ = tc.Close()
	}
	return false
}

// ServeNative runs one native agent link for as long as it lives, and then
// calls ended. It returns once the link is up (or refused: the agent is
// told why on the control stream, see native.ServerOptions.Check); the
// link then runs on its own (native.ServerLink.Start), so that an idle
// agent on package mux holds no goroutine.
func (s *Server) ServeNative(ctx context.Context, conn net.Conn, cfg native.Config, ended func()) {
	var (
		id      ident.Identifiers
		agentID string
		refused bool   // Check refused the agent (and logged it)
		release func() // the agent id's claim on a link
	)
	remote := conn.RemoteAddr().String()
	l, err := native.Accept(ctx, conn, native.ServerOptions{
		ServerID: s.ServerID, ServerCount: s.ServerCount, Config: cfg, Log: s.Log,
		// Check runs inside Accept, before the agent is told.
		Check: func(ctx context.Context, h native.Hello) error {
			agentID = h.AgentID
			err := s.checkNative(ctx, h, &id)
			if err != nil {
				refused = true
				s.refused(LinkNative, agentID, remote, err)
				return err
			}
			if release, err = s.claim(agentID); err != nil {
				refused = true
				s.tooManyLinks(LinkNative, remote, err.(*LinkLimitError))
			}
			return err
		},
	})
	if err != nil {
		if release != nil {
			release()
		}
		if !refused {
			s.handshakeFailed(agentID, remote, err, cfg)
		}
		ended()
		return
	}
	b := &routing.Backend{AgentID: l.Hello().AgentID, Kind: LinkNative, Ident: id, Link: l}
	s.up(b)
	l.Start(ctx, func(err error) {
		s.down(b, err)
		release()
		ended()
	})
}

// handshakeFailed counts and logs a native link whose handshake failed:
// a hello above the control message bound, or not in time, are bounds.
func (s *Server) handshakeFailed(agentID, remote string, err error, cfg native.Config) {
	switch {
	case errors.Is(err, native.ErrControlTooLarge):
		s.Limits.Hit(limits.ControlMessageBytes, "native link refused: the agent's hello is larger than --max-control-message-bytes",
			"agent", limits.Clip(agentID), "remote", remote, "err", err)
	case errors.Is(err, context.DeadlineExceeded):
		s.Limits.Hit(limits.AgentHandshakeTime, "native link cut: no hello within --agent-handshake-timeout after the TLS handshake",
			"remote", remote, "timeout", cfg.HandshakeTimeout)
	default:
		s.Log.Info("native link handshake failed", "agent", limits.Clip(agentID), "remote", remote, "err", err)
	}
}

// checkNative checks a native agent's hello and sets its identifiers.
func (s *Server) checkNative(ctx context.Context, h native.Hello, id *ident.Identifiers) error {
	var err error
	if *id, err = ident.Parse(h.Identifiers); err != nil {
		return &auth.RefusedError{Reason: auth.BadMetadata, Detail: "agentIdentifiers", Err: err}
	}
	if s.Auth == nil {
		s.tokenIgnored(LinkNative, h.AgentID, h.Token != "")
		return nil
	}
	return s.Auth.Authenticate(ctx, h.AgentID, h.Token)
}

// chanListener hands connections that finished their handshake to the gRPC
// server.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// HandshakenCreds are gRPC transport credentials for connections whose TLS
// handshake the Port already did: they pass the connection through and
// report its TLS state.
func HandshakenCreds() credentials.TransportCredentials { return handshaken{} }

type handshaken struct{}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("agent port: connection without TLS")
	}
	return c, credentials.TLSInfo{State: tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("agent port credentials are server-only")
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2"}
}
func (h handshaken) Clone() credentials.TransportCredentials { return h }
func (handshaken) OverrideServerName(string) error           { return nil }
