package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"

	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/native"
)

// tunnelLink is a link to one server, whichever its wire: Run serves it
// until it ends, Accept hands out the server's dial requests.
type tunnelLink interface {
	link.Acceptor
	Run(ctx context.Context) error
	Drain() error
	Active() int
}

// pendingLink is a connected, not yet running link.
type pendingLink struct {
	held   *heldLink
	ctx    context.Context
	cancel context.CancelFunc
	closer io.Closer // the gRPC connection of an ANP link; nil for native
}

// run serves the link and its dial requests until the link ends; it
// returns after every connection of the link has finished.
func (p *pendingLink) run(a *Agent) error {
	defer p.close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		a.serveLink(p.ctx, p.held)
	}()
	err := p.held.l.Run(p.ctx)
	p.cancel()
	<-served
	if errors.Is(err, native.ErrControlTooLarge) {
		a.metrics.limits.Hit(limits.ControlMessageBytes, "tunnel ended: the proxy-server sent a control message larger than --max-control-message-bytes (a protocol violation)",
			"server", p.held.serverID, "err", err)
	}
	return err
}

// close drops the link's resources (also for a link that will not run).
func (p *pendingLink) close() {
	p.cancel()
	if p.closer != nil {
		_ = p.closer.Close()
	}
}

// connect opens a link to host: the native link when the server offers it
// (ALPN), the ANP gRPC link otherwise.
func (a *Agent) connect(ctx context.Context, host string) (*pendingLink, int, error) {
	target := net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(a.cfg.ProxyServerPort))
	var tc *tls.Config
	if a.reloader != nil {
		tc = a.reloader.ClientConfig(a.tls) // the files as they are now
	} else {
		tc = a.tls.Clone()
	}
	tc.ServerName = strings.Trim(host, "[]")
	if a.cfg.Link != LinkANP {
		p, n, err := a.connectNative(ctx, target, tc)
		if err == nil || !errors.Is(err, errNoNative) {
			return p, n, err
		}
		if a.cfg.Link == LinkNative {
			return nil, 0, fmt.Errorf("connect %s: the server does not offer the native link (--link=native)", target)
		}
	}
	return a.connectANP(ctx, target, tc)
}

var errNoNative = errors.New("native link not offered")

// connectNative dials TLS offering the native link first.
func (a *Agent) connectNative(ctx context.Context, target string, tc *tls.Config) (*pendingLink, int, error) {
	tc.NextProtos = append([]string{native.ALPN, "h2"}, a.cfg.ALPNProtos...)
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(dctx, "tcp", target)
	if err != nil {
		return nil, 0, fmt.Errorf("connect %s: %w", target, err)
	}
	// WrapRaw lets the native link batch its TLS records into few writes.
	conn := tls.Client(native.WrapRaw(raw), tc)
	if err := conn.HandshakeContext(dctx); err != nil {
		conn.Close()
		return nil, 0, a.refusal(target, fmt.Errorf("TLS: %w", err))
	}
	if conn.ConnectionState().NegotiatedProtocol != native.ALPN {
		conn.Close()
		return nil, 0, errNoNative
	}
	tok, err := a.token()
	if err != nil {
		conn.Close()
		return nil, 0, err
	}
	h := native.Hello{AgentID: a.cfg.AgentID, Identifiers: a.cfg.AgentIdentifiers, Token: tok}
	var serverID string // known once connected; OnBusy runs only after
	l, w, err := native.Connect(ctx, conn, h, native.AgentOptions{
		Config:       native.Config{Mux: a.cfg.NativeMux, StreamWindow: a.cfg.StreamWindow, MaxControlMessage: a.cfg.MaxControlMessageBytes},
		Log:          a.log,
		PendingDials: a.cfg.MaxPendingDials,
		OnBusy:       func() { a.busy(serverID, "native", "") },
	})
	if err != nil {
		if errors.Is(err, native.ErrControlTooLarge) {
			a.metrics.limits.Hit(limits.ControlMessageBytes, "proxy-server's answer to the hello is larger than --max-control-message-bytes", "target", target, "err", err)
		}
		return nil, 0, a.refusal(target, err)
	}
	serverID = w.ServerID
	lctx, lcancel := context.WithCancel(ctx)
	return &pendingLink{held: &heldLink{serverID: w.ServerID, kind: "native", l: l}, ctx: lctx, cancel: lcancel, closer: l}, w.ServerCount, nil
}

// connectANP opens one /AgentService/Connect stream and reads the server's
// headers.
func (a *Agent) connectANP(ctx context.Context, target string, tc *tls.Config) (*pendingLink, int, error) {
	tc.NextProtos = a.cfg.ALPNProtos
	creds := newAlertCreds(credentials.NewTLS(tc)) // keeps the server's TLS alert (alert.go)
	cc, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: a.cfg.KeepaliveTime, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(anp.Codec())), // DATA packets without reflection
	)
	if err != nil {
		return nil, 0, fmt.Errorf("connect %s: %w", target, err)
	}
	md := metadata.Pairs(anp.MDAgentID, a.cfg.AgentID)
	if a.cfg.AgentIdentifiers != "" {
		md.Append(anp.MDAgentIdentifiers, a.cfg.AgentIdentifiers)
	}
	tok, err := a.token()
	if err != nil {
		cc.Close()
		return nil, 0, err
	}
	if tok != "" {
		md.Append(anp.MDAuthorization, "Bearer "+tok)
	}
	lctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, md))
	fail := func(err error) (*pendingLink, int, error) {
		cancel()
		cc.Close()
		if alert := creds.Alert(); alert != nil { // the server refused our certificate
			err = fmt.Errorf("TLS: %w", alert)
		}
		return nil, 0, a.refusal(target, err)
	}
	stream, err := anp.OpenAgentStream(lctx, cc)
	if err != nil {
		return fail(err)
	}
	hdr, err := stream.Header()
	if err != nil {
		return fail(fmt.Errorf("read server headers: %w", err))
	}
	if len(hdr) == 0 {
		// A server that refuses ends the stream at once, with a status and
		// no headers (trailers only): the status is the reason.
		if _, rerr := stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
			return fail(rerr)
		}
	}
	id, count, err := serverHeaders(hdr)
	if err != nil {
		return fail(err)
	}
	l := anp.NewAgentLink(stream, anp.AgentOptions{
		Log:          a.log.With("server", id),
		QueueBytes:   a.cfg.QueueBytes,
		StallTimeout: a.cfg.StallTimeout,
		Observer:     a.metrics.packets,
		PendingDials: a.cfg.MaxPendingDials,
		OnBusy:       func(address string) { a.busy(id, "anp", address) },
	})
	return &pendingLink{held: &heldLink{serverID: id, kind: "anp", l: l}, ctx: lctx, cancel: cancel, closer: cc}, count, nil
}

// serverHeaders reads serverID and serverCount; each must appear once, as
// upstream agents require.
func serverHeaders(md metadata.MD) (string, int, error) {
	ids, counts := md.Get(anp.MDServerID), md.Get(anp.MDServerCount)
	if len(ids) != 1 || ids[0] == "" {
		return "", 0, fmt.Errorf("server sent %d %s headers, want exactly one", len(ids), anp.MDServerID)
	}
	if len(counts) != 1 {
		return "", 0, fmt.Errorf("server sent %d %s headers, want exactly one", len(counts), anp.MDServerCount)
	}
	n, err := strconv.Atoi(counts[0])
	if err != nil || n < 1 {
		return "", 0, fmt.Errorf("server sent %s %q, want a positive number", anp.MDServerCount, counts[0])
	}
	return ids[0], n, nil
}

// hold registers a connected link unless its server is already held.
func (a *Agent) hold(h *heldLink) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, dup := a.links[h.serverID]; dup {
		return false
	}
	a.links[h.serverID] = h
	a.notifyLocked()
	if a.draining {
		go func() { _ = h.l.Drain() }()
	}
	return true
}

func (a *Agent) release(h *heldLink) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.links[h.serverID] == h {
		delete(a.links, h.serverID)
		a.notifyLocked()
	}
}

func (a *Agent) setExpected(n int) {
	a.mu.Lock()
	a.expected = n
	a.mu.Unlock()
}
