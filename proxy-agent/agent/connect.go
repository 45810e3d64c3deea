package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"isthmus.dev/tunnel/anp"
)

// pendingLink is a connected, not yet running link.
type pendingLink struct {
	held   *heldLink
	cc     *grpc.ClientConn
	ctx    context.Context
	cancel context.CancelFunc
}

func (p *pendingLink) run() error {
	defer p.cc.Close()
	defer p.cancel()
	return p.held.l.Run(p.ctx)
}

// connect opens one agent stream to host and reads the server's headers.
func (a *Agent) connect(ctx context.Context, host string) (*pendingLink, int, error) {
	target := net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(a.cfg.ProxyServerPort))
	tc := a.tls.Clone()
	tc.ServerName = strings.Trim(host, "[]")
	cc, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: a.cfg.KeepaliveTime, PermitWithoutStream: true}),
	)
	if err != nil {
		return nil, 0, fmt.Errorf("connect %s: %w", target, err)
	}
	md := metadata.Pairs(anp.MDAgentID, a.cfg.AgentID)
	if a.cfg.AgentIdentifiers != "" {
		md.Append(anp.MDAgentIdentifiers, a.cfg.AgentIdentifiers)
	}
	if a.cfg.TokenPath != "" {
		tok, err := os.ReadFile(a.cfg.TokenPath)
		if err != nil {
			cc.Close()
			return nil, 0, fmt.Errorf("--service-account-token-path: %w", err)
		}
		md.Append(anp.MDAuthorization, "Bearer "+strings.TrimSpace(string(tok)))
	}
	lctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, md))
	fail := func(err error) (*pendingLink, int, error) {
		cancel()
		cc.Close()
		return nil, 0, fmt.Errorf("connect %s: %w", target, err)
	}
	stream, err := anp.OpenAgentStream(lctx, cc)
	if err != nil {
		return fail(err)
	}
	hdr, err := stream.Header()
	if err != nil {
		return fail(fmt.Errorf("read server headers: %w", err))
	}
	id, count, err := serverHeaders(hdr)
	if err != nil {
		return fail(err)
	}
	l := anp.NewAgentLink(stream, a.dial, anp.AgentOptions{
		Log:          a.log.With("server", id),
		QueueBytes:   a.cfg.QueueBytes,
		StallTimeout: a.cfg.StallTimeout,
		DialTimeout:  a.cfg.DialTimeout,
		OnSplice:     a.metrics.onSplice,
		OnDial:       a.metrics.onDial,
	})
	return &pendingLink{held: &heldLink{serverID: id, host: host, l: l}, cc: cc, ctx: lctx, cancel: cancel}, count, nil
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

// close drops a link that will not run.
func (p *pendingLink) close() {
	p.cancel()
	p.cc.Close()
}
