package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"isthmus.dev/certs/kubeconfig"
	"isthmus.dev/proxy-server/agents"
	"isthmus.dev/proxy-server/auth"
	"isthmus.dev/proxy-server/frontend"
	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/buildinfo"
	"isthmus.dev/tunnel/leases"
	"isthmus.dev/tunnel/limits"
)

// leaseReleaseTimeout bounds the deletion of the server's lease at shutdown.
const leaseReleaseTimeout = 5 * time.Second

// Server is a configured proxy-server. New, then Run.
type Server struct {
	cfg      Config
	log      *slog.Logger
	registry *routing.Registry
	metrics  *metrics
	agentsM  *agents.Metrics
	limits   *limits.Hits // bounds hit (limit_hits_total), logged rate limited
	tracker  frontend.Tracker
	auth     *auth.Authenticator // nil: token authentication off
	leases   *leases.Controller  // nil: no lease controller

	mu    sync.Mutex
	addrs Addrs
	ready chan struct{}
}

// Addrs are the bound addresses, known once Ready is closed.
type Addrs struct {
	Frontend, Agent, Health, Admin net.Addr
}

// New validates cfg and builds the server: its Kubernetes client when
// token authentication or leases need one (nothing is sent before Run).
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, ready: make(chan struct{})}
	s.registry = routing.NewRegistry(cfg.ProxyStrategies, log)
	s.metrics = newMetrics(&s.cfg, s.registry, &s.tracker)
	var err error
	if s.agentsM, err = agents.NewMetrics(s.metrics.reg); err != nil {
		return nil, err
	}
	if s.limits, err = limits.New(limits.Config{Registerer: s.metrics.reg, Subsystem: subsystem, Limits: limits.ServerLimits, Log: log}); err != nil {
		return nil, err
	}
	s.cfg.Bounds.limitRegistry(s.registry, s.limits)
	if !cfg.needsClient() {
		return s, nil
	}
	client := cfg.Client
	if client == nil {
		if client, err = kubeconfig.NewClientset(kubeconfig.ClientOptions{Path: cfg.Kubeconfig, QPS: cfg.KubeconfigQPS,
			Burst: cfg.KubeconfigBurst, ContentType: cfg.KubeAPIContentType, UserAgent: "proxy-server/" + buildinfo.Get().Version}); err != nil {
			return nil, err
		}
	}
	if err := s.newKubeParts(client); err != nil {
		return nil, err
	}
	return s, nil
}

// newKubeParts builds token authentication and the lease controller; they
// share client.
func (s *Server) newKubeParts(client kubernetes.Interface) error {
	c := &s.cfg
	var err error
	if c.TokenAuth() {
		s.auth, err = auth.New(auth.Config{Reviewer: auth.ClientReviewer{Client: client}, Namespace: c.AgentNamespace,
			ServiceAccount: c.AgentServiceAccount, Audience: c.AuthenticationAudience,
			Log: s.log.With("component", "auth"), Registerer: s.metrics.reg})
		if err != nil {
			return err
		}
	}
	if c.EnableLeaseController {
		labels, err := leases.ParseLabels(c.LeaseLabel)
		if err != nil {
			return fmt.Errorf("--lease-label: %w", err)
		}
		s.leases, err = leases.NewController(leases.ControllerConfig{Client: client, Namespace: c.LeaseNamespace, Labels: labels,
			ServerID: c.ServerID, Duration: c.LeaseDuration, RenewInterval: c.LeaseRenewalInterval,
			GCInterval: c.LeaseGCInterval, Log: s.log.With("component", "leases"), Registerer: s.metrics.reg})
		if err != nil {
			return err
		}
	}
	return nil
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

// Run serves until ctx ends or a listener fails, then shuts down: the
// frontend stops accepting, in-flight connections get
// GracefulShutdownTimeout to finish, everything is closed, and the
// server's lease is deleted. Run returns after every goroutine it started
// ended: nil after ctx ended, else the listener's error.
func (s *Server) Run(ctx context.Context) error {
	parts, err := s.build()
	if err != nil {
		return err
	}
	ls, err := s.listen()
	if err != nil {
		parts.cancel()
		return err
	}
	s.mu.Lock()
	s.addrs = Addrs{addrOf(ls.frontend), addrOf(ls.agent), addrOf(ls.health), addrOf(ls.admin)}
	s.mu.Unlock()
	if s.cfg.EnableContentionProfiling {
		runtime.SetBlockProfileRate(1)
		prevMutex := runtime.SetMutexProfileFraction(1)
		defer func() { runtime.SetBlockProfileRate(0); runtime.SetMutexProfileFraction(prevMutex) }()
	}

	g, gctx := errgroup.WithContext(ctx)
	var stopping atomic.Bool
	serveAll(g, &stopping, parts.serve(ls))
	stopLeases := s.runLeases(ctx)
	s.logStart(ls)
	close(s.ready)
	<-gctx.Done()

	stopping.Store(true)
	s.shutdown(ls, parts)
	err = g.Wait()
	if s.leases != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseReleaseTimeout)
		if rerr := s.leases.Release(rctx); rerr != nil {
			s.log.Warn("could not delete the server lease; agents count this server until it expires", "err", rerr)
		}
		cancel()
	}
	stopLeases()
	// The frontend's socket file went with its listener's Close (shutdown),
	// if it was still ours: removing the path here could delete the socket
	// of a server started since, or a file that is not a socket.
	if err != nil {
		s.log.Error("proxy-server stopped: a listener failed", "err", err)
		return err
	}
	s.log.Info("proxy-server stopped")
	return nil
}

// serveAll runs every listener's loop in g. A loop that fails, or ends
// before stopping is set, is an error of g (which ends its context).
func serveAll(g *errgroup.Group, stopping *atomic.Bool, ls []listener) {
	for _, l := range ls {
		g.Go(func() error {
			err := ignoreClosed(l.serve())
			if err == nil && !stopping.Load() {
				err = errors.New("stopped accepting connections")
			}
			if err != nil {
				return fmt.Errorf("%s listener: %w", l.name, err)
			}
			return nil
		})
	}
}

// runLeases runs the lease controller, if any, until the returned stop.
func (s *Server) runLeases(ctx context.Context) (stop func()) {
	if s.leases == nil {
		return func() {}
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.leases.Run(lctx); err != nil {
			s.log.Error("server lease controller failed", "err", err)
		}
	}()
	return func() { cancel(); <-done }
}

func (s *Server) logStart(ls *listeners) {
	c, bi := &s.cfg, buildinfo.Get()
	var agentAuth []string
	if c.ClusterCACert != "" {
		agentAuth = append(agentAuth, "client-certificate")
	}
	if c.TokenAuth() {
		agentAuth = append(agentAuth, "service-account-token("+c.AgentNamespace+"/"+c.AgentServiceAccount+", audience "+c.AuthenticationAudience+")")
	}
	authed := len(agentAuth) > 0
	if !authed {
		agentAuth = append(agentAuth, "NONE (--allow-unauthenticated-agents)")
	}
	s.log.Info("proxy-server started", "version", bi.Version, "commit", bi.Commit, "go", bi.GoVersion,
		"mode", c.Mode, "frontend", ls.frontend.Addr().String(), "agentPort", ls.agent.Addr().String(),
		"agentAuth", agentAuth, "serverID", c.ServerID, "serverCount", c.ServerCount,
		"strategies", c.ProxyStrategies, "leases", c.EnableLeaseController)
	if !authed {
		s.log.Warn("agents are not authenticated: any TLS client reaching the agent port can register as an agent (--allow-unauthenticated-agents)")
	}
	if authed && c.AllowUnauthenticatedAgents {
		s.log.Warn("--allow-unauthenticated-agents has no effect: agents are authenticated", "by", agentAuth)
	}
	if c.Kubeconfig != "" && !c.needsClient() {
		s.log.Warn("--kubeconfig is set but nothing uses it: token authentication and --enable-lease-controller are off", "kubeconfig", c.Kubeconfig)
	}
}

// shutdown stops taking new clients, lets in-flight ones finish within
// the grace period, then stops every listener.
func (s *Server) shutdown(ls *listeners, p *parts) {
	c := &s.cfg
	s.log.Info("shutting down", "inFlight", s.tracker.Len(), "gracePeriod", c.GracefulShutdownTimeout)
	_ = ls.frontend.Close()
	if c.GracefulShutdownTimeout > 0 {
		gctx, cancel := context.WithTimeout(context.Background(), c.GracefulShutdownTimeout)
		if err := s.tracker.Wait(gctx); err != nil {
			s.log.Warn("graceful shutdown timed out; closing the remaining connections", "open", s.tracker.Len())
		}
		cancel()
	}
	p.stop()
}

func addrOf(ln net.Listener) net.Addr {
	if ln == nil {
		return nil
	}
	return ln.Addr()
}
