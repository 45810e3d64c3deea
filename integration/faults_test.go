package integration

// Fault tests: real proxy-server and proxy-agent processes on real sockets,
// driven into failed, timed-out and cancelled dials, missing, killed and
// restarted agents, and a restarted server. Every test runs over both
// frontends (gRPC with konnectivity-client, HTTP CONNECT), both frontend
// transports and both agent links (paths_test.go: the full matrix, or a
// pairwise set for the slow ones); network traffic goes only to loopback
// and to network namespaces the tests create.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	kclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	kmetrics "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client/metrics"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// Metric names the fault tests read.
const (
	faultMServerConns       = "konnectivity_network_proxy_server_established_connections"
	faultMServerBackends    = "konnectivity_network_proxy_server_ready_backend_connections"
	faultMServerDials       = "konnectivity_network_proxy_server_frontend_dials_total"
	faultMAgentOpen         = "konnectivity_network_proxy_agent_open_endpoint_connections"
	faultMAgentDialFailures = "konnectivity_network_proxy_agent_endpoint_dial_failure_total"
)

// faultBlackholePort is the port dialed in a black-hole namespace (kubelet's; any
// port does: every packet is dropped).
const faultBlackholePort = 10250

// faultStartPair starts a server and one agent and waits until both are ready.
func faultStartPair(t testing.TB, pki *certs.Bundle, c pathCase, serverExtra, agentExtra []string) (*harness.Server, *harness.Agent) {
	t.Helper()
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: c.mode, Transport: c.transport, Extra: serverExtra})
	a := faultStartAgent(t, s, c, agentExtra...)
	a.WaitReady(t)
	s.WaitReady(t)
	return s, a
}

// faultStartAgent starts an agent of s on c's link.
func faultStartAgent(t testing.TB, s *harness.Server, c pathCase, extra ...string) *harness.Agent {
	t.Helper()
	return harness.StartAgent(t, bins, s, harness.AgentOpts{Extra: c.agentFlags(extra...)})
}

// faultExpectDialError checks a failed dial: on the CONNECT frontend the status
// and its one-line reason, on the gRPC frontend an error answered by the
// server (DIAL_RSP with an error), not one made up by the client.
func faultExpectDialError(t testing.TB, mode string, err error, status int) {
	t.Helper()
	if err == nil {
		t.Fatalf("dial succeeded; want a failure (%d)", status)
	}
	if mode == harness.HTTPConnect {
		var ce *harness.ConnectError
		if !errors.As(err, &ce) {
			t.Fatalf("dial failed without a CONNECT answer: %v; want %d", err, status)
		}
		if ce.Status != status {
			t.Fatalf("CONNECT answered %d (%q); want %d", ce.Status, ce.Line, status)
		}
		if strings.TrimSpace(ce.Line) == "" || !strings.HasSuffix(ce.Line, "\n") {
			t.Fatalf("CONNECT %d reason %q: want one non-empty line", ce.Status, ce.Line)
		}
		t.Logf("CONNECT answered %d: %s", ce.Status, strings.TrimSpace(ce.Line))
		return
	}
	if ok, reason := kclient.GetDialFailureReason(err); !ok || reason != kmetrics.DialFailureEndpoint {
		t.Fatalf("gRPC dial error %v: reason %q (dial failure: %v); want %q (DIAL_RSP with an error)", err, reason, ok, kmetrics.DialFailureEndpoint)
	}
	t.Logf("gRPC dial failed as expected: %v", err)
}

// faultNoLeftovers waits until neither the server holds a frontend
// connection nor the agent a backend connection.
func faultNoLeftovers(t testing.TB, s *harness.Server, agents ...*harness.Agent) {
	t.Helper()
	harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerConns, 0)
	for _, a := range agents {
		harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), faultMAgentOpen, 0)
	}
}

// faultReadFull is io.ReadFull bounded by d; konnectivity-client's conn
// has no deadlines, so on timeout c is closed to end the read.
func faultReadFull(c net.Conn, buf []byte, d time.Duration) error {
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(c, buf)
		done <- err
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		_ = c.Close()
		<-done
		return fmt.Errorf("read: no answer within %v", d)
	}
}

// faultEcho dials target through s, checks one echo exchange and closes.
func faultEcho(t testing.TB, s *harness.Server, target, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := s.Dial(ctx, target)
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if err := faultReadFull(c, got, 10*time.Second); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q want %q", got, msg)
	}
}

// faultConn reads its connection in the background, so a test can see
// when the peer ends it and can ping it with a bound on the wait.
type faultConn struct {
	net.Conn
	data chan []byte
	stop chan struct{}
	done chan struct{} // closed when the reader ended; err is then set
	err  error
}

func faultWatch(t testing.TB, c net.Conn) *faultConn {
	t.Helper()
	w := &faultConn{Conn: c, data: make(chan []byte, 16), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				select {
				case w.data <- append([]byte(nil), buf[:n]...):
				case <-w.stop:
					return
				}
			}
			if err != nil {
				w.err = err
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(w.stop)
		_ = c.Close()
		select {
		case <-w.done:
		case <-time.After(20 * time.Second):
			t.Errorf("reader of a tunneled connection still running 20s after Close")
		}
	})
	return w
}

// ended reports whether the connection has ended (the reader saw an error).
func (w *faultConn) ended() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// ping writes msg and waits up to d for the echo.
func (w *faultConn) ping(msg string, d time.Duration) error {
	if _, err := w.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	var got []byte
	for len(got) < len(msg) {
		select {
		case b := <-w.data:
			got = append(got, b...)
		case <-w.done:
			return fmt.Errorf("connection ended: %w", w.err)
		case <-timer.C:
			return fmt.Errorf("no echo within %v (got %q)", d, got)
		}
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q want %q", got, msg)
	}
	return nil
}

// TestFaultDialRefused dials a closed loopback port: the CONNECT frontend
// answers 502, the gRPC frontend a DIAL_RSP error; nothing stays open, and
// the next dial works.
func TestFaultDialRefused(t *testing.T) {
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	closed := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(t)))
	for _, c := range allPaths {
		t.Run(c.name(), func(t *testing.T) {
			harness.LeakCheck(t)
			s, a := faultStartPair(t, pki, c, nil, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := s.Dial(ctx, closed)
			if conn != nil {
				conn.Close()
			}
			faultExpectDialError(t, c.mode, err, http.StatusBadGateway)
			harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), faultMAgentDialFailures, 1, "reason", "refused")
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerDials, 1, "frontend", c.mode, "result", "refused")
			faultNoLeftovers(t, s, a)
			faultEcho(t, s, echo.Addr(), "after a refused dial")
			faultNoLeftovers(t, s, a)
			harness.WaitFor(t, 10*time.Second, "echo backend connections closed", func() bool { return echo.Open() == 0 })
		})
	}
}

// TestFaultDialTimeout dials an address whose SYNs are dropped (a namespace
// with a drop-all input chain): the agent's --backend-dial-timeout ends the
// dial; CONNECT answers 504, gRPC a DIAL_RSP error; no socket is left.
// Each case waits out the timeout: the pairwise paths.
func TestFaultDialTimeout(t *testing.T) {
	bh := harness.NewBlackhole(t)
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	target := bh.Addr(faultBlackholePort)
	for _, c := range pairwisePaths {
		t.Run(c.name(), func(t *testing.T) {
			harness.LeakCheck(t)
			s, a := faultStartPair(t, pki, c, nil, []string{"--backend-dial-timeout=2s"})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := s.Dial(ctx, target)
			if conn != nil {
				conn.Close()
			}
			faultExpectDialError(t, c.mode, err, http.StatusGatewayTimeout)
			harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), faultMAgentDialFailures, 1, "reason", "timeout")
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerDials, 1, "frontend", c.mode, "result", "timeout")
			harness.WaitFor(t, 10*time.Second, "no socket to "+target, func() bool { return bh.Sockets(t) == 0 })
			faultNoLeftovers(t, s, a)
			faultEcho(t, s, echo.Addr(), "after a timed-out dial")
			faultNoLeftovers(t, s, a)
		})
	}
}

// faultPendingDial is a dial running in the background.
type faultPendingDial struct {
	cancel context.CancelFunc
	res    chan faultDialResult
}

type faultDialResult struct {
	c   net.Conn
	err error
}

// faultDialAsync starts dial with a context the test cancels (at the latest
// at cleanup).
func faultDialAsync(t testing.TB, dial func(context.Context) (net.Conn, error)) *faultPendingDial {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p := &faultPendingDial{cancel: cancel, res: make(chan faultDialResult, 1)}
	go func() {
		c, err := dial(ctx)
		p.res <- faultDialResult{c, err}
	}()
	return p
}

// wait returns the dial's result, failing t if it takes longer than d.
func (p *faultPendingDial) wait(t testing.TB, d time.Duration) faultDialResult {
	t.Helper()
	select {
	case r := <-p.res:
		return r
	case <-time.After(d):
		t.Fatalf("dial still pending after %v", d)
		return faultDialResult{}
	}
}

// faultCancelPending starts dial to the black hole, waits until the agent's
// SYN is out, cancels the dial, and checks the client sees an error (for
// konnectivity-client: a context failure), the agent's dial ends at once
// (no socket left) and both sides count a cancelled dial (the n-th one).
func faultCancelPending(t testing.TB, bh *harness.Blackhole, s *harness.Server, a *harness.Agent, grpc bool, n int, dial func(context.Context) (net.Conn, error)) {
	t.Helper()
	p := faultDialAsync(t, dial)
	// Cancel only once the agent's dial is in flight.
	harness.WaitFor(t, 10*time.Second, "the agent dialing the black hole", func() bool { return bh.Sockets(t) > 0 })
	time.Sleep(300 * time.Millisecond)
	p.cancel()
	r := p.wait(t, 15*time.Second)
	if r.c != nil {
		r.c.Close()
		t.Fatal("cancelled dial returned a connection")
	}
	if r.err == nil {
		t.Fatal("cancelled dial returned no error")
	}
	if grpc {
		if ok, reason := kclient.GetDialFailureReason(r.err); !ok || reason != kmetrics.DialFailureContext {
			t.Fatalf("cancelled gRPC dial: %v, reason %q; want %q", r.err, reason, kmetrics.DialFailureContext)
		}
	}
	t.Logf("cancelled dial %d returned: %v", n, r.err)
	harness.WaitFor(t, 10*time.Second, "the agent's pending dial to end after the cancel", func() bool { return bh.Sockets(t) == 0 })
	harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), faultMAgentDialFailures, float64(n), "reason", "cancelled")
	mode := harness.HTTPConnect
	if grpc {
		mode = harness.GRPC
	}
	harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerDials, float64(n), "frontend", mode, "result", "cancelled")
	faultNoLeftovers(t, s, a)
}

// TestFaultDialCancelled cancels dials while the agent's backend dial is
// pending (its SYN unanswered): konnectivity-client sends DIAL_CLS, a
// CONNECT client hangs up. The server must cancel the agent's dial at once
// (the agent and server timeouts are a minute, so only the cancel can end
// it), leave no socket behind, and go on serving. Each case waits for the
// agent's SYN twice: the pairwise paths, and the reusable tunnel on both
// links.
func TestFaultDialCancelled(t *testing.T) {
	bh := harness.NewBlackhole(t)
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	target := bh.Addr(faultBlackholePort)
	long := []string{"--backend-dial-timeout=60s"}
	for _, c := range pairwisePaths {
		t.Run(c.name(), func(t *testing.T) {
			harness.LeakCheck(t)
			s, a := faultStartPair(t, pki, c, long, long)
			for n := 1; n <= 2; n++ {
				faultCancelPending(t, bh, s, a, c.mode == harness.GRPC, n, func(ctx context.Context) (net.Conn, error) {
					return s.Dial(ctx, target)
				})
			}
			if code := harness.HTTPStatus(s.ReadyURL()); code != http.StatusOK {
				t.Fatalf("server /readyz = %d after cancelled dials", code)
			}
			faultEcho(t, s, echo.Addr(), "after cancelled dials")
			faultNoLeftovers(t, s, a)
			harness.WaitFor(t, 10*time.Second, "echo backend connections closed", func() bool { return echo.Open() == 0 })
		})
	}
	// konnectivity-client's reusable tunnel: one gRPC connection, a stream
	// per dial. A cancelled dial ends its stream only; the tunnel goes on.
	for _, link := range []string{linkNative, linkANP} {
		t.Run("grpc-reusable/uds/"+link, func(t *testing.T) { faultCancelReusable(t, pki, bh, echo, link) })
	}
}

// faultCancelReusable cancels dials on konnectivity-client's reusable
// tunnel over link, then dials again on the same tunnel.
func faultCancelReusable(t *testing.T, pki *certs.Bundle, bh *harness.Blackhole, echo *harness.Backend, link string) {
	harness.LeakCheck(t)
	long := []string{"--backend-dial-timeout=60s"}
	target := bh.Addr(faultBlackholePort)
	s, a := faultStartPair(t, pki, pathCase{harness.GRPC, harness.UDS, link}, long, long)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tun, err := s.ReusableTunnel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	for n := 1; n <= 2; n++ {
		faultCancelPending(t, bh, s, a, true, n, func(ctx context.Context) (net.Conn, error) {
			return tun.DialContext(ctx, "tcp", target)
		})
	}
	conn, err := tun.DialContext(ctx, "tcp", echo.Addr())
	if err != nil {
		t.Fatalf("dial on the reusable tunnel after cancelled dials: %v", err)
	}
	w := faultWatch(t, conn)
	if err := w.ping("same tunnel, new stream", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	faultNoLeftovers(t, s, a)
}

// TestFaultServerDialTimeout bounds the dial with the server's
// --backend-dial-timeout (1s) while the agent would wait a minute: the
// client gets 504 or a DIAL_RSP error, and the server's DIAL_CLS cancels
// the agent's dial (no socket left). Each case waits out the timeout: the
// pairwise paths.
func TestFaultServerDialTimeout(t *testing.T) {
	bh := harness.NewBlackhole(t)
	pki := harness.NewPKI(t)
	target := bh.Addr(faultBlackholePort)
	for _, c := range pairwisePaths {
		t.Run(c.name(), func(t *testing.T) {
			harness.LeakCheck(t)
			s, a := faultStartPair(t, pki, c, []string{"--backend-dial-timeout=1s"}, []string{"--backend-dial-timeout=60s"})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := s.Dial(ctx, target)
			if conn != nil {
				conn.Close()
			}
			faultExpectDialError(t, c.mode, err, http.StatusGatewayTimeout)
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerDials, 1, "frontend", c.mode, "result", "timeout")
			harness.WaitFor(t, 10*time.Second, "the agent's dial to be cancelled", func() bool { return bh.Sockets(t) == 0 })
			harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), faultMAgentDialFailures, 1, "reason", "cancelled")
			faultNoLeftovers(t, s, a)
		})
	}
}

// TestFaultAgentKilledMidDial kills the only agent while it dials: the
// pending dial fails at once (502 for CONNECT: the agent link broke; a
// DIAL_RSP error for gRPC) instead of waiting for a timeout, and a new agent
// serves the next dial.
func TestFaultAgentKilledMidDial(t *testing.T) {
	bh := harness.NewBlackhole(t)
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	target := bh.Addr(faultBlackholePort)
	long := []string{"--backend-dial-timeout=60s"}
	for _, c := range allPaths {
		t.Run(c.name(), func(t *testing.T) {
			harness.LeakCheck(t)
			s, a := faultStartPair(t, pki, c, long, long)
			p := faultDialAsync(t, func(ctx context.Context) (net.Conn, error) { return s.Dial(ctx, target) })
			harness.WaitFor(t, 10*time.Second, "the agent dialing the black hole", func() bool { return bh.Sockets(t) > 0 })
			a.Kill()
			r := p.wait(t, 15*time.Second)
			if r.c != nil {
				r.c.Close()
			}
			faultExpectDialError(t, c.mode, r.err, http.StatusBadGateway)
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerDials, 1, "frontend", c.mode, "result", "link_closed")
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerConns, 0)

			a2 := faultStartAgent(t, s, c)
			a2.WaitReady(t)
			s.WaitReady(t)
			faultEcho(t, s, echo.Addr(), "through a new agent")
			faultNoLeftovers(t, s, a2)
		})
	}
}

// TestFaultNoAgent dials through a server with no agent: CONNECT answers 503,
// gRPC a DIAL_RSP error; once an agent connects, dials work.
func TestFaultNoAgent(t *testing.T) {
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	for _, c := range allPaths {
		t.Run(c.name(), func(t *testing.T) {
			harness.LeakCheck(t)
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: c.mode, Transport: c.transport})
			if code := harness.HTTPStatus(s.ReadyURL()); code != http.StatusServiceUnavailable {
				t.Fatalf("server /readyz without an agent = %d; want 503", code)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := s.Dial(ctx, echo.Addr())
			if conn != nil {
				conn.Close()
			}
			faultExpectDialError(t, c.mode, err, http.StatusServiceUnavailable)
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerDials, 1, "frontend", c.mode, "result", "no_agent")
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerConns, 0)

			a := faultStartAgent(t, s, c)
			a.WaitReady(t)
			s.WaitReady(t)
			faultEcho(t, s, echo.Addr(), "once an agent is there")
			faultNoLeftovers(t, s, a)
		})
	}
}

// TestFaultAgentKilled kills one of two agents (SIGKILL) while connections
// run through both: the killed agent's connections end (EOF or error) within
// a bound, the other agent's keep echoing, and new dials go through the
// survivor.
func TestFaultAgentKilled(t *testing.T) {
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	const conns = 4
	for _, c := range allPaths {
		t.Run(c.name(), func(t *testing.T) {
			harness.LeakCheck(t)
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: c.mode, Transport: c.transport})
			victim := faultStartAgent(t, s, c)
			survivor := faultStartAgent(t, s, c)
			victim.WaitReady(t)
			survivor.WaitReady(t)
			harness.WaitMetric(t, 20*time.Second, s.MetricsURL(), faultMServerBackends, 2)

			ws := make([]*faultConn, 0, conns)
			for i := range conns {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				conn, err := s.Dial(ctx, echo.Addr())
				cancel()
				if err != nil {
					t.Fatalf("dial %d: %v", i, err)
				}
				w := faultWatch(t, conn)
				if err := w.ping(fmt.Sprintf("hello %d", i), 10*time.Second); err != nil {
					t.Fatalf("conn %d: %v", i, err)
				}
				ws = append(ws, w)
			}
			onVictim, err := harness.MetricSum(victim.MetricsURL(), faultMAgentOpen)
			if err != nil {
				t.Fatal(err)
			}
			onSurvivor, err := harness.MetricSum(survivor.MetricsURL(), faultMAgentOpen)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("connections: %v on the victim, %v on the survivor", onVictim, onSurvivor)
			if onVictim < 1 || onSurvivor < 1 || onVictim+onSurvivor != conns {
				t.Fatalf("want the %d connections spread over both agents (least-loaded); got %v and %v", conns, onVictim, onSurvivor)
			}

			victim.Kill()
			harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), faultMServerBackends, 1)
			harness.WaitFor(t, 15*time.Second, "the killed agent's connections to end", func() bool {
				n := 0
				for _, w := range ws {
					if w.ended() {
						n++
					}
				}
				return n >= int(onVictim)
			})
			alive := 0
			for i, w := range ws {
				if w.ended() {
					t.Logf("conn %d ended: %v", i, w.err)
					continue
				}
				if err := w.ping(fmt.Sprintf("still there %d", i), 10*time.Second); err != nil {
					t.Errorf("conn %d (not on the killed agent) broke: %v", i, err)
					continue
				}
				alive++
			}
			if alive != int(onSurvivor) {
				t.Fatalf("%d connections still work; want the survivor's %v", alive, onSurvivor)
			}
			if code := harness.HTTPStatus(s.ReadyURL()); code != http.StatusOK {
				t.Fatalf("server /readyz = %d with one agent left", code)
			}
			for i := range 3 {
				faultEcho(t, s, echo.Addr(), fmt.Sprintf("new dial %d after the kill", i))
			}
			for _, w := range ws {
				_ = w.Close()
			}
			faultNoLeftovers(t, s, survivor)
			harness.WaitFor(t, 10*time.Second, "echo backend connections closed", func() bool { return echo.Open() == 0 })
		})
	}
}

// faultRestart runs, for each fault case, a server and agent with one
// connection open; crash must end that connection and check the fallout,
// restart must bring the pair back. Then the agent must have reconnected by
// itself: dials work and nothing is left behind.
func faultRestart(t *testing.T, what string,
	crash func(t *testing.T, c pathCase, s *harness.Server, a *harness.Agent, echo *harness.Backend),
	restart func(t *testing.T, s *harness.Server, a *harness.Agent)) {
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	for _, c := range allPaths {
		t.Run(c.name(), func(t *testing.T) {
			harness.LeakCheck(t)
			s, a := faultStartPair(t, pki, c, nil, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := s.Dial(ctx, echo.Addr())
			if err != nil {
				t.Fatal(err)
			}
			w := faultWatch(t, conn)
			if err := w.ping("before", 10*time.Second); err != nil {
				t.Fatal(err)
			}

			crash(t, c, s, a, echo)
			harness.WaitFor(t, 15*time.Second, "the open connection to end", w.ended)

			restart(t, s, a)
			s.WaitReady(t)
			a.WaitReady(t)
			faultEcho(t, s, echo.Addr(), "after the "+what+" restarted")
			_ = w.Close()
			faultNoLeftovers(t, s, a)
			harness.WaitFor(t, 10*time.Second, "echo backend connections closed", func() bool { return echo.Open() == 0 })
		})
	}
}

// TestFaultAgentRestart kills the agent with a connection open, checks the
// connection ends and the server stops being ready and answers "no agent",
// then restarts the agent: it reconnects by itself and dials work again.
func TestFaultAgentRestart(t *testing.T) {
	faultRestart(t, "agent", func(t *testing.T, c pathCase, s *harness.Server, a *harness.Agent, echo *harness.Backend) {
		a.Kill()
		harness.WaitFor(t, 10*time.Second, "server /readyz to fail", func() bool {
			return harness.HTTPStatus(s.ReadyURL()) == http.StatusServiceUnavailable
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn2, err := s.Dial(ctx, echo.Addr())
		if conn2 != nil {
			conn2.Close()
		}
		faultExpectDialError(t, c.mode, err, http.StatusServiceUnavailable)
	}, func(t *testing.T, _ *harness.Server, a *harness.Agent) { a.Restart(t) })
}

// TestFaultServerRestart kills the server with a connection open, checks the
// connection ends and the agent notices (its /readyz fails), then starts the
// server again on the same ports: the agent reconnects by itself and dials
// work again.
func TestFaultServerRestart(t *testing.T) {
	faultRestart(t, "server", func(t *testing.T, _ pathCase, s *harness.Server, a *harness.Agent, echo *harness.Backend) {
		s.Kill()
		harness.WaitFor(t, 10*time.Second, "agent /readyz to fail", func() bool {
			return harness.HTTPStatus(a.ReadyURL()) == http.StatusServiceUnavailable
		})
		// The agent let go of the backend connection of the dead tunnel.
		harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), faultMAgentOpen, 0)
		harness.WaitFor(t, 10*time.Second, "echo backend connections closed", func() bool { return echo.Open() == 0 })
	}, func(t *testing.T, s *harness.Server, _ *harness.Agent) { s.Restart(t) })
}
