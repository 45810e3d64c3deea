package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"isthmus.dev/proxy-server/agents"
	"isthmus.dev/proxy-server/frontend"
	"isthmus.dev/tunnel/anp"
)

// frontendMaxMsg is the largest DATA packet a frontend client may send.
// konnectivity-client sends one packet per Write, unsplit, so gRPC's 4 MiB
// default would break large writes.
const frontendMaxMsg = 32 << 20

// frontendWindow is the gRPC frontend's receive window, per stream and per
// connection: fixed, so that grpc-go does not size it by pinging. Its
// dynamic window pings the client at the first DATA after each answered
// ping, which for request/response traffic is nearly every message: a
// PING, its ACK and a WINDOW_UPDATE more on the wire, and a system call
// more on each side. The client is on this machine or near it, so 1 MiB
// is many round trips' worth (grpc-go's dynamic window starts at 64 KiB
// and may grow to 16 MiB); a backend that stops reading holds up at most
// this much of one stream in the server.
const frontendWindow = 1 << 20

// parts are the servers Run starts on its listeners.
type parts struct {
	agentGRPC    *grpc.Server
	port         *agents.Port
	grpcFrontend *grpc.Server      // grpc mode
	connect      *frontend.Connect // http-connect mode
	frontendTLS  *tls.Config       // http-connect mode over TCP
	health       *http.Server
	admin        *http.Server
	ctx          context.Context // of the agent port and the CONNECT frontend; stop cancels it
	cancel       context.CancelFunc
}

// listener is one listener's serve loop, named for errors.
type listener struct {
	name  string
	serve func() error
}

// build makes every server Run needs; nothing listens yet.
func (s *Server) build() (*parts, error) {
	c := &s.cfg
	agentTLS, err := serverTLS(c.ClusterCert, c.ClusterKey, c.ClusterCACert, c, s.log.With("tls", "agent-port"))
	if err != nil {
		return nil, fmt.Errorf("agent port TLS (--cluster-cert, --cluster-key, --cluster-ca-cert): %w", err)
	}
	p := &parts{}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	var frontendCreds credentials.TransportCredentials
	if c.UDSName == "" {
		if p.frontendTLS, err = serverTLS(c.ServerCert, c.ServerKey, c.ServerCACert, c, s.log.With("tls", "frontend")); err != nil {
			p.cancel()
			return nil, fmt.Errorf("frontend TLS (--server-cert, --server-key, --server-ca-cert): %w", err)
		}
		frontendCreds = loggedTLS{credentials.NewTLS(p.frontendTLS), s.limits.Log()} // logs refused clients
	}

	// Agent port: ALPN picks the native link or the ANP gRPC link.
	p.agentGRPC = grpc.NewServer(
		grpc.Creds(agents.HandshakenCreds()),
		grpc.ConnectionTimeout(c.AgentHandshakeTimeout), // the HTTP/2 preface after the TLS handshake
		// An ANP agent link silent for KeepaliveTime is pinged, and dropped
		// when the ping gets no answer within 20 s: a dead path (no RST, no
		// FIN) is noticed within their sum, as on the native link.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: c.KeepaliveTime, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 30 * time.Second, PermitWithoutStream: true}),
		grpc.StreamInterceptor(s.metrics.countStreams),
		grpc.ForceServerCodecV2(anp.Codec()), // DATA packets without reflection
	)
	alog := s.log.With("component", "agents")
	agentsSrv := &agents.Server{
		ServerID: c.ServerID, ServerCount: c.ServerCount, Registry: s.registry, ClientCerts: c.ClusterCACert != "",
		QueueBytes: c.QueueBytes, StallTimeout: c.StallTimeout, Log: alog, Metrics: s.agentsM,
		Observer:         streamObserver{s.metrics, segmentToAgent, segmentFromAgent},
		MaxLinksPerAgent: c.MaxLinksPerAgent, Limits: s.limits,
	}
	if s.auth != nil {
		agentsSrv.Auth = s.auth
	}
	agentsSrv.Register(p.agentGRPC)
	p.port = &agents.Port{TLS: agentTLS, GRPC: p.agentGRPC, Agents: agentsSrv, Log: alog,
		Native: c.Bounds.nativeConfig(c.StreamWindow, c.NativeMux), HandshakeTimeout: c.AgentHandshakeTimeout, Limits: s.limits}

	flog := s.log.With("component", "frontend")
	dialer := pendingDialer{s.registry, s.metrics.pendingDials}
	switch c.Mode {
	case ModeGRPC:
		opts := []grpc.ServerOption{
			grpc.MaxRecvMsgSize(frontendMaxMsg),
			grpc.KeepaliveParams(keepalive.ServerParameters{Time: c.FrontendKeepaliveTime}),
			grpc.StreamInterceptor(s.metrics.countStreams),
			grpc.ForceServerCodecV2(anp.Codec()), // DATA packets without reflection
			grpc.StaticStreamWindowSize(frontendWindow),
			grpc.StaticConnWindowSize(frontendWindow),
		}
		if frontendCreds == nil {
			frontendCreds = frontend.UnixPeerCreds() // the client is the peer process
		}
		opts = append(opts, grpc.Creds(frontendCreds))
		p.grpcFrontend = grpc.NewServer(opts...)
		(&frontend.GRPC{Dialer: dialer, DialTimeout: c.BackendDialTimeout, Log: flog, Tracker: &s.tracker,
			OnDial: s.metrics.observeDial, Observer: streamObserver{s.metrics, segmentToClient, segmentFromClient},
			MaxPendingPerClient: c.MaxPendingDialsPerClient, Limits: s.limits}).Register(p.grpcFrontend)
	case ModeHTTPConnect:
		p.connect = &frontend.Connect{Dialer: dialer, DialTimeout: c.BackendDialTimeout, Log: flog,
			Tracker: &s.tracker, OnDial: s.metrics.observeDial, MaxHeaderBytes: c.ConnectMaxHeaderBytes,
			HeaderTimeout: c.ConnectHeaderTimeout, MaxPendingPerClient: c.MaxPendingDialsPerClient, Limits: s.limits}
	}
	p.health = &http.Server{Handler: s.healthMux(), ReadHeaderTimeout: 10 * time.Second}
	p.admin = &http.Server{Handler: s.adminMux(), ReadHeaderTimeout: 10 * time.Second}
	return p, nil
}

// serve lists the serve loops of ls's listeners.
func (p *parts) serve(ls *listeners) []listener {
	out := []listener{{"agent", func() error { return p.port.Serve(p.ctx, ls.agent) }}}
	switch {
	case p.grpcFrontend != nil:
		out = append(out, listener{"frontend", func() error { return p.grpcFrontend.Serve(ls.frontend) }})
	case p.frontendTLS != nil:
		out = append(out, listener{"frontend", func() error { return p.connect.Serve(p.ctx, tlsListener(ls.frontend, p.frontendTLS)) }})
	default:
		out = append(out, listener{"frontend", func() error { return p.connect.Serve(p.ctx, ls.frontend) }})
	}
	if ls.health != nil {
		out = append(out, listener{"health", func() error { return p.health.Serve(ls.health) }})
	}
	if ls.admin != nil {
		out = append(out, listener{"admin", func() error { return p.admin.Serve(ls.admin) }})
	}
	return out
}

// stop ends every server and its connections.
func (p *parts) stop() {
	p.cancel()
	if p.grpcFrontend != nil {
		p.grpcFrontend.Stop()
	}
	if p.connect != nil {
		_ = p.connect.Close()
	}
	p.agentGRPC.Stop()
	_ = p.health.Close()
	_ = p.admin.Close()
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) || errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// listeners holds what Run binds, closed in reverse on failure.
type listeners struct {
	frontend, agent, health, admin net.Listener
}

func (l *listeners) close() {
	for _, ln := range []net.Listener{l.admin, l.health, l.agent, l.frontend} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

func (s *Server) listen() (*listeners, error) {
	var l listeners
	var err error
	c := &s.cfg
	if c.UDSName != "" {
		// 0600 (0660 with --uds-group); never removes a non-socket. Its
		// errors name --uds-name.
		if l.frontend, err = listenUnix(c); err != nil {
			return nil, fmt.Errorf("frontend: %w", err)
		}
	} else if l.frontend, err = net.Listen("tcp", net.JoinHostPort(c.ServerBindAddress, strconv.Itoa(c.ServerPort))); err != nil {
		return nil, fmt.Errorf("frontend: listen (--server-port): %w", err)
	}
	if l.agent, err = net.Listen("tcp", net.JoinHostPort(c.AgentBindAddress, strconv.Itoa(c.AgentPort))); err != nil {
		l.close()
		return nil, fmt.Errorf("agent port: listen (--agent-port): %w", err)
	}
	if c.HealthPort > 0 {
		if l.health, err = net.Listen("tcp", net.JoinHostPort(c.HealthBindAddress, strconv.Itoa(c.HealthPort))); err != nil {
			l.close()
			return nil, fmt.Errorf("health port: listen (--health-port): %w", err)
		}
	}
	if c.AdminPort > 0 {
		if l.admin, err = net.Listen("tcp", net.JoinHostPort(c.AdminBindAddress, strconv.Itoa(c.AdminPort))); err != nil {
			l.close()
			return nil, fmt.Errorf("admin port: listen (--admin-port): %w", err)
		}
	}
	return &l, nil
}

func (s *Server) healthMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	ready := func(w http.ResponseWriter, _ *http.Request) {
		if n := s.registry.Len(); n == 0 {
			http.Error(w, "not ready: no agent connected", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}
	mux.HandleFunc("/readyz", ready)
	mux.HandleFunc("/ready", ready)
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) adminMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	if s.cfg.EnableProfiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
