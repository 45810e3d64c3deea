package agent

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/tunnel/link"
)

// Agent holds tunnels to every proxy-server and serves their dials.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	tls      *tls.Config
	reloader *certs.Reloader // nil: no CA or certificate files
	dial     link.DialFunc
	metrics  *metrics

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
	a := &Agent{cfg: cfg, log: log, tls: tc, reloader: reloader, links: map[string]*heldLink{}, changed: make(chan struct{})}
	a.metrics = newMetrics(a)
	d := &net.Dialer{}
	a.dial = func(ctx context.Context, address string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", address)
	}
	a.expected = len(cfg.ProxyServerHosts)
	return a, nil
}

// Run holds tunnels until ctx ends; it returns once every link, dial and
// connection has finished.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
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
func (a *Agent) Ready() (held, expected int, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.links), a.expected, len(a.links) >= a.expected && a.expected > 0
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

// syncHost keeps the tunnels of one --proxy-server-host: one server, or,
// when it is the only host given (a load balancer), as many distinct
// servers as they report in serverCount.
func (a *Agent) syncHost(ctx context.Context, host string) {
	log := a.log.With("host", host)
	var (
		wg      sync.WaitGroup
		mine    = map[string]bool{} // server ids held through this host
		ended   = make(chan string, 1)
		backoff = a.cfg.SyncInterval
		want    = 1
		probe   *time.Timer
	)
	defer wg.Wait()
	for {
		if len(mine) >= want {
			// Full: wait for a link to end (or, with --sync-forever, probe
			// now and then for servers added behind a load balancer).
			var probeC <-chan time.Time
			if a.cfg.SyncForever && len(a.cfg.ProxyServerHosts) == 1 {
				probe = time.NewTimer(a.cfg.SyncIntervalCap)
				probeC = probe.C
			}
			select {
			case <-ctx.Done():
				return
			case id := <-ended:
				delete(mine, id)
				// Not at once: a server that drops links right after
				// accepting them must not be hammered.
				select {
				case <-ctx.Done():
					return
				case <-time.After(jitter(a.cfg.SyncInterval)):
				}
			case <-probeC:
			}
			if probe != nil {
				probe.Stop()
			}
		}
		// Drain the ends that happened meanwhile.
	drainEnds:
		for {
			select {
			case id := <-ended:
				delete(mine, id)
			default:
				break drainEnds
			}
		}
		hl, count, err := a.connect(ctx, host)
		// On failure: jittered, capped exponential backoff.
		wait := jitter(backoff)
		switch {
		case ctx.Err() != nil:
			if hl != nil {
				hl.close()
			}
			return
		case err != nil:
			log.Warn("cannot connect to proxy-server; will retry", "err", err, "retryIn", wait.Round(time.Millisecond))
			a.metrics.connectFailures.Inc()
		case !a.hold(hl.held):
			log.Debug("already holding this server; dropping the duplicate connection", "server", hl.held.serverID)
			hl.close()
		default:
			if len(a.cfg.ProxyServerHosts) == 1 {
				want = count
				a.setExpected(count)
			}
			mine[hl.held.serverID] = true
			backoff = a.cfg.SyncInterval
			log.Info("connected to proxy-server", "server", hl.held.serverID, "link", hl.held.kind, "serverCount", count, "holding", len(mine))
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := hl.run()
				a.release(hl.held)
				log.Info("tunnel to proxy-server ended", "server", hl.held.serverID, "err", err)
				select {
				case ended <- hl.held.serverID:
				case <-ctx.Done():
				}
			}()
			continue // full: wait above; short: dial again now
		}
		backoff = min(2*backoff, a.cfg.SyncIntervalCap)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// jitter returns a random duration in [d/2, d].
func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }
