package reliability

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"isthmus.dev/proxy-agent/agent"

	"isthmus.dev/integration/harness"
)

// The 10,000 connections through one agent: one by one, a burst held
// open all at once, and churn from many clients.
const (
	seqConns   = 1000
	burstConns = 1000
	churnConns = 8000
	loadWorker = 32
)

// loopRig is a server and an agent process on loopback with an echo
// backend, both watched.
type loopRig struct {
	server  *harness.Server
	agent   *harness.Agent
	backend *harness.Backend
}

func newLoopRig(t *testing.T, link, frontend string) *loopRig {
	t.Helper()
	pki := harness.NewPKI(t)
	r := &loopRig{backend: harness.StartBackend(t, harness.Echo)}
	r.server = harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: frontend, Extra: append(profiled(t, "--admin-port"), serverFlags(link)...)})
	r.agent = harness.StartAgent(t, bins, r.server, harness.AgentOpts{Extra: append(profiled(t, "--admin-server-port"), agentFlags(link)...)})
	r.server.WaitReady(t)
	r.agent.WaitReady(t)
	return r
}

func (r *loopRig) procs() []proc {
	c := &http.Client{Timeout: 10 * time.Second}
	return []proc{serverProc(r.server),
		{name: "proxy-agent", url: r.agent.MetricsURL(), gcURL: gcURL(r.agent.Opts.Extra, "--admin-server-port"), client: c}}
}

// tenThousand: 10,000 connections opened and closed through one agent.
func tenThousand(t *testing.T, w *row, link, frontend string) {
	w.r.Checked = fmt.Sprintf("10,000 connections through one agent, each echoing 64 bytes: %d one by one, %d held open at once, "+
		"%d by %d clients at a time; none fails; server and agent back near their baseline; new dials work",
		seqConns, burstConns, churnConns, loadWorker)
	r := newLoopRig(t, link, frontend)
	u := startWatch(t, r.procs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var errs []error
	phase := func(name string, n int, run func() []error) {
		start := time.Now()
		e := run()
		errs = append(errs, e...)
		took := time.Since(start)
		t.Logf("%s: %d connections in %v, %d failed", name, n, took.Round(time.Millisecond), len(e))
		w.figure("%s: %d in %.1fs (%.0f/s), %d failed", name, n, took.Seconds(), float64(n)/took.Seconds(), len(e))
	}
	phase("one by one", seqConns, func() []error {
		return parallel(seqConns, 1, func(i int) error { return dialEcho(ctx, r.server, r.backend.Addr(), uint64(i), 64) })
	})
	phase("held open at once", burstConns, func() []error { return burst(ctx, r.server, r.backend, burstConns) })
	phase("churn", churnConns, func() []error {
		return parallel(churnConns, loadWorker, func(i int) error { return dialEcho(ctx, r.server, r.backend.Addr(), uint64(i), 64) })
	})
	w.check(len(errs) == 0, "%d of 10000 connections failed, first: %v", len(errs), errors.Join(first(errs, 3)...))
	harness.WaitFor(t, time.Minute, "the backend's connections to close", func() bool { return r.backend.Open() == 0 })
	harness.WaitMetric(t, time.Minute, r.agent.MetricsURL(), "konnectivity_network_proxy_agent_open_endpoint_connections", 0)
	u.finish(t, w)
	if err := dialEcho(ctx, r.server, r.backend.Addr(), 1, 64<<10); err != nil {
		w.check(false, "a new dial after the load failed: %v", err)
	}
}

// burst opens n connections through s (loadWorker at a time), checks an
// echo on each while all are open, then closes them all.
func burst(ctx context.Context, s *harness.Server, b *harness.Backend, n int) []error {
	conns := make([]net.Conn, n)
	errs := parallel(n, loadWorker, func(i int) error {
		c, err := s.Dial(ctx, b.Addr())
		if err != nil {
			return fmt.Errorf("burst dial %d: %w", i, err)
		}
		conns[i] = c
		return nil
	})
	// A dial is answered once the agent's connect returned; the backend
	// counts the connection once its accept loop took it, a moment later.
	open := b.Open()
	for deadline := time.Now().Add(10 * time.Second); open < n-len(errs) && time.Now().Before(deadline); open = b.Open() {
		time.Sleep(20 * time.Millisecond)
	}
	if open < n-len(errs) {
		errs = append(errs, fmt.Errorf("%d connections dialled, the backend holds %d after 10s", n-len(errs), open))
	}
	errs = append(errs, parallel(n, loadWorker, func(i int) error {
		if conns[i] == nil {
			return nil
		}
		defer conns[i].Close()
		if got := echo(ctx, conns[i], pattern(uint64(i)), 64, 64); got.Err != nil {
			return fmt.Errorf("burst echo %d: %w", i, got.Err)
		}
		return nil
	})...)
	return errs
}

func first(errs []error, n int) []error { return errs[:min(n, len(errs))] }

// massAgents agents in this process connect to one server.
const (
	massAgents = 1000
	massDials  = 2000
)

// thousandAgents: 1,000 agents (the agent package, in this process, half
// on each link) connected to one server while dials flow through it.
func thousandAgents(t *testing.T, w *row, frontend string) {
	w.r.Checked = fmt.Sprintf("%d agents in one process (half native, half ANP) on one server; %d dials (1 KiB echo) "+
		"while they are connected; none fails; the server back near its baseline once they left; new dials work", massAgents, massDials)
	pki := harness.NewPKI(t)
	backend := harness.StartBackend(t, harness.Echo)
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: frontend, Extra: profiled(t, "--admin-port")})
	u := startWatch(t, serverProc(s))
	start := time.Now()
	stop := harness.StartInProcessAgents(t, s, massAgents, "mass", func(_ int, c *agent.Config) {
		c.AgentCert, c.AgentKey = s.PKI.AgentCert, s.PKI.AgentKey
	})
	harness.WaitMetric(t, 5*time.Minute, s.MetricsURL(), "konnectivity_network_proxy_server_agent_links", massAgents)
	w.figure("%d agents connected in %.1fs", massAgents, time.Since(start).Seconds())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start = time.Now()
	errs := parallel(massDials, loadWorker, func(i int) error { return dialEcho(ctx, s, backend.Addr(), uint64(i), 1024) })
	w.figure("%d dials in %.1fs, %d failed", massDials, time.Since(start).Seconds(), len(errs))
	w.check(len(errs) == 0, "%d of %d dials failed with %d agents, first: %v", len(errs), massDials, massAgents, errors.Join(first(errs, 3)...))
	stop()
	harness.WaitMetric(t, time.Minute, s.MetricsURL(), "konnectivity_network_proxy_server_agent_links", 0)
	u.finish(t, w)
	harness.StartAgent(t, bins, s, harness.AgentOpts{}).WaitReady(t)
	if err := dialEcho(ctx, s, backend.Addr(), 1, 64<<10); err != nil {
		w.check(false, "a new dial after the agents left failed: %v", err)
	}
}
