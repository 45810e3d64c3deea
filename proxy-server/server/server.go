package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"isthmus.dev/proxy-server/agents"
	"isthmus.dev/proxy-server/frontend"
	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/native"
)

// frontendMaxMsg is the largest DATA packet a frontend client may send.
// konnectivity-client sends one packet per Write, unsplit, so gRPC's 4 MiB
// default would break large writes.
const frontendMaxMsg = 32 << 20

// Server is a configured proxy-server. New, then Run.
type Server struct {
	cfg      Config
	log      *slog.Logger
	registry *routing.Registry
	metrics  *metrics
	tracker  frontend.Tracker

	mu    sync.Mutex
	addrs Addrs
	ready chan struct{}
}

// Addrs are the bound addresses, known once Ready is closed.
type Addrs struct {
	Frontend, Agent, Health, Admin net.Addr
}

// New validates cfg and returns a server ready to Run.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, ready: make(chan struct{})}
	s.registry = routing.NewRegistry(cfg.ProxyStrategies, log)
	s.metrics = newMetrics(
		func() float64 { return float64(s.registry.Len()) },
		func() float64 { return float64(s.tracker.Len()) })
	return s, nil
}

// Ready is closed once every listener is bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the bound addresses (valid after Ready).
func (s *Server) Addrs() Addrs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs
}

// Agents lists the ids of connected agents.
func (s *Server) Agents() []string { return s.registry.Agents() }

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
		if c.DeleteUDSFile {
			if rerr := os.Remove(c.UDSName); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				return nil, fmt.Errorf("remove stale socket %s: %w", c.UDSName, rerr)
			}
		}
		l.frontend, err = net.Listen("unix", c.UDSName)
	} else {
		l.frontend, err = net.Listen("tcp", net.JoinHostPort(c.ServerBindAddress, strconv.Itoa(c.ServerPort)))
	}
	if err != nil {
		return nil, fmt.Errorf("frontend: listen: %w", err)
	}
	if l.agent, err = net.Listen("tcp", net.JoinHostPort(c.AgentBindAddress, strconv.Itoa(c.AgentPort))); err != nil {
		l.close()
		return nil, fmt.Errorf("agent port: listen: %w", err)
	}
	if c.HealthPort > 0 {
		if l.health, err = net.Listen("tcp", net.JoinHostPort(c.HealthBindAddress, strconv.Itoa(c.HealthPort))); err != nil {
			l.close()
			return nil, fmt.Errorf("health port: listen: %w", err)
		}
	}
	if c.AdminPort > 0 {
		if l.admin, err = net.Listen("tcp", net.JoinHostPort(c.AdminBindAddress, strconv.Itoa(c.AdminPort))); err != nil {
			l.close()
			return nil, fmt.Errorf("admin port: listen: %w", err)
		}
	}
	return &l, nil
}

func addrOf(ln net.Listener) net.Addr {
	if ln == nil {
		return nil
	}
	return ln.Addr()
}

// Run serves until ctx ends, then shuts down: the frontend stops accepting,
// in-flight connections get GracefulShutdownTimeout to finish, then
// everything is closed. Run returns after every goroutine it started ended.
func (s *Server) Run(ctx context.Context) error {
	c := &s.cfg
	agentTLS, err := serverTLS(c.ClusterCert, c.ClusterKey, c.ClusterCACert, c, s.log.With("tls", "agent-port"))
	if err != nil {
		return fmt.Errorf("agent port TLS: %w", err)
	}
	var frontendCreds credentials.TransportCredentials
	var frontendTLS *tls.Config
	if c.UDSName == "" {
		t, err := serverTLS(c.ServerCert, c.ServerKey, c.ServerCACert, c, s.log.With("tls", "frontend"))
		if err != nil {
			return fmt.Errorf("frontend TLS: %w", err)
		}
		frontendTLS = t
		frontendCreds = credentials.NewTLS(t)
	}
	ls, err := s.listen()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.addrs = Addrs{addrOf(ls.frontend), addrOf(ls.agent), addrOf(ls.health), addrOf(ls.admin)}
	s.mu.Unlock()

	var wg sync.WaitGroup
	goServe := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				s.log.Error("listener failed", "listener", name, "err", err)
			}
		}()
	}

	// Agent port: ALPN picks the native link or the ANP gRPC link.
	agentSrv := grpc.NewServer(
		grpc.Creds(agents.HandshakenCreds()),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: c.KeepaliveTime}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 30 * time.Second, PermitWithoutStream: true}),
	)
	agentsSrv := &agents.Server{
		ServerID: c.ServerID, ServerCount: c.ServerCount, Registry: s.registry,
		QueueBytes: c.QueueBytes, StallTimeout: c.StallTimeout, Log: s.log.With("component", "agents"),
		OnLink: func(d int) { s.metrics.agentLinks.Add(float64(d)) },
	}
	agentsSrv.Register(agentSrv)
	port := &agents.Port{TLS: agentTLS, GRPC: agentSrv, Agents: agentsSrv, Log: s.log.With("component", "agents"),
		Native: native.Config{StreamWindow: c.StreamWindow}}
	actx, stopAgents := context.WithCancel(context.WithoutCancel(ctx))
	goServe("agent", func() error { return port.Serve(actx, ls.agent) })

	// Frontend.
	flog := s.log.With("component", "frontend")
	var stopFrontend func()
	switch c.Mode {
	case ModeGRPC:
		opts := []grpc.ServerOption{
			grpc.MaxRecvMsgSize(frontendMaxMsg),
			grpc.KeepaliveParams(keepalive.ServerParameters{Time: c.FrontendKeepaliveTime}),
		}
		if frontendCreds != nil {
			opts = append(opts, grpc.Creds(frontendCreds))
		}
		g := grpc.NewServer(opts...)
		(&frontend.GRPC{Dialer: s.registry, DialTimeout: c.BackendDialTimeout, Log: flog,
			Tracker: &s.tracker, OnDial: s.metrics.observeDial}).Register(g)
		goServe("frontend", func() error { return ignoreClosed(g.Serve(ls.frontend)) })
		stopFrontend = g.Stop
	case ModeHTTPConnect:
		cs := &frontend.Connect{Dialer: s.registry, DialTimeout: c.BackendDialTimeout, Log: flog,
			Tracker: &s.tracker, OnDial: s.metrics.observeDial}
		ln := ls.frontend
		if frontendTLS != nil {
			ln = tlsListener(ln, frontendTLS)
		}
		fctx, fcancel := context.WithCancel(context.WithoutCancel(ctx))
		goServe("frontend", func() error { return cs.Serve(fctx, ln) })
		stopFrontend = func() { fcancel(); _ = cs.Close() }
	}

	var httpSrvs []*http.Server
	if ls.health != nil {
		h := &http.Server{Handler: s.healthMux(), ReadHeaderTimeout: 10 * time.Second}
		httpSrvs = append(httpSrvs, h)
		goServe("health", func() error { return ignoreClosed(h.Serve(ls.health)) })
	}
	if ls.admin != nil {
		h := &http.Server{Handler: s.adminMux(), ReadHeaderTimeout: 10 * time.Second}
		httpSrvs = append(httpSrvs, h)
		goServe("admin", func() error { return ignoreClosed(h.Serve(ls.admin)) })
	}

	s.log.Info("proxy-server started", "mode", c.Mode, "frontend", ls.frontend.Addr().String(),
		"agentPort", ls.agent.Addr().String(), "serverID", c.ServerID, "serverCount", c.ServerCount,
		"strategies", c.ProxyStrategies)
	close(s.ready)
	<-ctx.Done()

	// Shutdown: stop taking new clients, let in-flight ones finish, then stop.
	s.log.Info("shutting down", "inFlight", s.tracker.Len(), "gracePeriod", c.GracefulShutdownTimeout)
	_ = ls.frontend.Close()
	if c.GracefulShutdownTimeout > 0 {
		gctx, cancel := context.WithTimeout(context.Background(), c.GracefulShutdownTimeout)
		if err := s.tracker.Wait(gctx); err != nil {
			s.log.Warn("graceful shutdown timed out; closing the remaining connections", "open", s.tracker.Len())
		}
		cancel()
	}
	stopFrontend()
	stopAgents()
	agentSrv.Stop()
	for _, h := range httpSrvs {
		_ = h.Close()
	}
	wg.Wait()
	if c.UDSName != "" {
		_ = os.Remove(c.UDSName)
	}
	s.log.Info("proxy-server stopped")
	return nil
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) || errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
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
