package agent

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"sync"

	"isthmus.dev/certs"
	"isthmus.dev/certs/kubeconfig"
	"isthmus.dev/proxy-agent/policy"
	"isthmus.dev/tunnel/buildinfo"
	"isthmus.dev/tunnel/leases"
)

// Agent holds tunnels to every proxy-server and serves their dials.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	tls      *tls.Config
	reloader *certs.Reloader // nil: no CA or certificate files
	dialer   *policy.Dialer
	metrics  *metrics
	counter  serverCounter // nil: servers are counted by their answers

	mu       sync.Mutex
	links    map[string]*heldLink // by server id
	expected int                  // servers we want to hold
	draining bool
	changed  chan struct{} // closed and replaced on every change of links
}

type heldLink struct {
	serverID string
	kind     string // "native" or "anp"
	l        tunnelLink
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = crand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// New validates cfg and loads its certificates.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: cfg.ALPNProtos}
	// The CA and the agent's certificate are read again when their files
	// change (checked at most once a second, at connects): rotations take
	// effect at the next reconnect without a restart.
	var reloader *certs.Reloader
	if cfg.CACert != "" || cfg.AgentCert != "" {
		r, err := certs.NewReloader(certs.ReloaderConfig{CertFile: cfg.AgentCert, KeyFile: cfg.AgentKey, CAFile: cfg.CACert, Log: log.With("tls", "agent")})
		if err != nil {
			return nil, fmt.Errorf("--ca-cert, --agent-cert, --agent-key: %w", err)
		}
		reloader = r
	}
	pol, err := policy.Parse(cfg.AllowedDestinations)
	if err != nil {
		return nil, fmt.Errorf("--allowed-destinations: %w", err)
	}
	a := &Agent{cfg: cfg, log: log, tls: tc, reloader: reloader, links: map[string]*heldLink{}, changed: make(chan struct{}),
		dialer: &policy.Dialer{Policy: pol}}
	a.metrics = newMetrics(a)
	a.expected = len(cfg.ProxyServerHosts)
	if cfg.CountServerLeases {
		if a.counter, err = a.leaseCounter(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Run holds tunnels until ctx ends; it returns once every link, dial and
// connection has finished.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if a.counter != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.counter.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("counting proxy-servers by their leases stopped", "err", err)
			}
		}()
	}
	for _, h := range a.cfg.ProxyServerHosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.syncHost(ctx, h)
		}()
	}
	wg.Wait()
	return nil
}

// Ready reports whether the agent holds a tunnel to every expected server.
// When servers are counted by their leases, not before the first count.
func (a *Agent) Ready() (held, expected int, ok bool) {
	counted := true
	if a.counter != nil {
		select {
		case <-a.counter.Synced():
		default:
			counted = false
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.links), a.expected, counted && len(a.links) >= a.expected && a.expected > 0
}

// Servers lists the ids of the servers the agent holds tunnels to.
func (a *Agent) Servers() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.links))
	for id := range a.links {
		out = append(out, id)
	}
	return out
}

// Changed returns a channel closed at the next change of held links.
func (a *Agent) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

func (a *Agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// Active is the number of open tunneled connections over all links.
func (a *Agent) Active() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, h := range a.links {
		n += h.l.Active()
	}
	return n
}

// Drain tells every server to prefer other agents for new dials; links
// connected later are drained too.
func (a *Agent) Drain() {
	a.mu.Lock()
	a.draining = true
	links := make([]*heldLink, 0, len(a.links))
	for _, h := range a.links {
		links = append(links, h)
	}
	a.mu.Unlock()
	for _, h := range links {
		if err := h.l.Drain(); err != nil {
			a.log.Warn("could not send DRAIN", "server", h.serverID, "err", err)
		}
	}
}

// serverCounter counts the proxy-servers from a source other than their
// answers: their leases (--count-server-leases).
type serverCounter interface {
	Run(ctx context.Context) error
	Synced() <-chan struct{}
	Count() int
	Changed() <-chan struct{}
}

// Policy is the destination policy the agent dials under.
func (a *Agent) Policy() string { return a.dialer.Policy.String() }

// leaseCounter counts the servers by their Leases, read through
// --kubeconfig (or the pod's service account).
func (a *Agent) leaseCounter() (*leases.Counter, error) {
	client, err := kubeconfig.NewClientset(kubeconfig.ClientOptions{
		Path: a.cfg.Kubeconfig, ContentType: a.cfg.KubeAPIContentType,
		UserAgent: "proxy-agent/" + buildinfo.Get().Version,
	})
	if err != nil {
		return nil, fmt.Errorf("--count-server-leases: %w", err)
	}
	c, err := leases.NewCounter(leases.CounterConfig{Client: client, Namespace: a.cfg.LeaseNamespace, Selector: a.cfg.LeaseLabel,
		Log: a.log.With("component", "leases"), Registerer: a.metrics.reg})
	if err != nil {
		return nil, fmt.Errorf("--count-server-leases: %w", err)
	}
	return c, nil
}
