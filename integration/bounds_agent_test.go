package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// A server that sends an agent more dials than --max-pending-dials-per-server
// gets the excess refused at once by the agent, on both links; the agent
// counts every refusal and logs a few; once the held dials end, dials go
// through again.
func TestBoundAgentPendingDials(t *testing.T) {
	bh := harness.NewBlackhole(t)
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	for _, link := range []string{"native", "anp"} {
		t.Run(link, func(t *testing.T) {
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect,
				Extra: []string{"--max-pending-dials-per-agent=100", "--backend-dial-timeout=2m"}})
			a := harness.StartAgent(t, bins, s, harness.AgentOpts{Extra: []string{"--link=" + link,
				"--max-pending-dials-per-server=2", "--backend-dial-timeout=2m"}})
			s.WaitReady(t)
			release := boundsHold(t, s, 2, func(ctx context.Context) (net.Conn, error) { return s.Dial(ctx, bh.Addr(443)) })

			const flood = 10
			for range flood {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				c, err := s.Dial(ctx, bh.Addr(443))
				cancel()
				if err == nil {
					c.Close()
				}
				var ce *harness.ConnectError
				if !errors.As(err, &ce) || ce.Status != http.StatusBadGateway || !strings.Contains(ce.Line, "agent busy") ||
					!strings.Contains(ce.Line, "--max-pending-dials-per-server") {
					t.Fatalf("dial beyond the agent's bound: %v; want 502 saying the agent is busy and naming its flag", err)
				}
			}
			harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), boundsAgentHits, flood, "limit", "agent_pending_dials")
			if lines := boundsLogLines(a.Output(), "limit=agent_pending_dials"); len(lines) == 0 || len(lines) > 3 {
				t.Errorf("%d log lines for a flood of %d refusals; want 1 to 3 (rate limited)", len(lines), flood)
			}

			// The held dials end (the server cancels them); room comes back.
			release()
			harness.WaitMetric(t, 20*time.Second, a.MetricsURL(), "konnectivity_network_proxy_agent_endpoint_dial_failure_total", 2, "reason", "cancelled")
			var err error
			for i := 0; i < 50; i++ { // the refusal follows the metric by a moment
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				var c net.Conn
				if c, err = s.Dial(ctx, echo.Addr()); err == nil {
					harness.CheckEcho(t, c, "room again")
					c.Close()
					cancel()
					break
				}
				cancel()
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("dial once the held dials ended: %v", err)
			}
		})
	}
}

// boundsTokenFile writes a "token" of n bytes (token authentication is off
// on the server: it is sent in the hello and not looked at).
func boundsTokenFile(t *testing.T, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(strings.Repeat("t", n)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A native link control message above --max-control-message-bytes ends the
// session: a hello (the agent is told why and logs it) or a message in a
// running session (a peer that breaks the protocol); both are counted.
func TestBoundControlMessage(t *testing.T) {
	pki := harness.NewPKI(t)
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, Extra: []string{"--max-control-message-bytes=4096"}})
	// One try: no retry of the refused agent races the count below.
	a := harness.StartAgent(t, bins, s, harness.AgentOpts{Auth: harness.AgentAuth{TokenPath: boundsTokenFile(t, 8<<10)},
		Extra: []string{"--link=native", "--sync-interval=1h", "--sync-interval-cap=1h"}})
	harness.WaitFor(t, 30*time.Second, "the agent's log of the refusal", func() bool {
		return len(boundsLogLines(a.Output(), "refused this agent", "control message too large")) > 0
	})
	if n, _ := harness.MetricSum(s.MetricsURL(), boundsServerHits, "limit", "control_message_bytes"); n < 1 {
		t.Fatalf("control_message_bytes hits %v, want at least 1", n)
	}
	if n, _ := harness.MetricSum(s.MetricsURL(), "konnectivity_network_proxy_server_agent_links"); n != 0 {
		t.Fatalf("%v agent links registered; want none", n)
	}
	a.Kill()
	before, _ := harness.MetricSum(s.MetricsURL(), boundsServerHits, "limit", "control_message_bytes")

	// A peer that says hello properly, then sends a frame claiming 1 MiB.
	ys, ctrl := boundsNativeHello(t, s, pki, "rogue")
	defer ys.Close()
	s.WaitAgents(t, 1)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 1<<20)
	// The server may end the session before this write returns: the
	// metric and the log below say why it ended.
	_, _ = ctrl.Write(append(hdr[:], "{\"t\":\"drain\""...))
	select {
	case <-ys.CloseChan():
	case <-time.After(20 * time.Second):
		t.Fatal("the server kept the session after an oversized control message")
	}
	s.WaitAgents(t, 0)
	harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), boundsServerHits, before+1, "limit", "control_message_bytes")
	if lines := boundsLogLines(s.Output(), "agent=rogue", "limit=control_message_bytes"); len(lines) != 1 {
		t.Errorf("%d log lines about the violation, want 1", len(lines))
	}
}

// boundsAgentTLS is an agent's TLS config for s (client certificate of pki).
func boundsAgentTLS(t *testing.T, pki *certs.Bundle, alpn ...string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(pki.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(pki.AgentCert, pki.AgentKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", NextProtos: alpn, MinVersion: tls.VersionTLS12}
}

// boundsNativeHello speaks the native link's handshake by hand (as
// tunnel/native's wire.go documents it) and returns the session and its
// control stream, welcomed.
func boundsNativeHello(t *testing.T, s *harness.Server, pki *certs.Bundle, agentID string) (*yamux.Session, net.Conn) {
	t.Helper()
	tc, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(s.AgentPort), boundsAgentTLS(t, pki, "isthmus/1"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	ys, err := yamux.Client(tc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := ys.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	hello := []byte(`{"t":"hello","version":1,"agentID":"` + agentID + `"}`)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(hello)))
	if _, err := ctrl.Write(append(hdr[:], hello...)); err != nil {
		t.Fatal(err)
	}
	_ = ctrl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(ctrl, hdr[:]); err != nil {
		t.Fatal(err)
	}
	welcome := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(ctrl, welcome); err != nil || !strings.Contains(string(welcome), `"welcome"`) {
		t.Fatalf("welcome %q: %v", welcome, err)
	}
	_ = ctrl.SetReadDeadline(time.Time{})
	return ys, ctrl
}

// One agent id holds at most --max-links-per-agent links: a second agent
// with the same id is refused and logs why, on both links; it gets in once
// the first is gone.
func TestBoundLinksPerAgent(t *testing.T) {
	pki := harness.NewPKI(t)
	for _, link := range []string{"native", "anp"} {
		t.Run(link, func(t *testing.T) {
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Extra: []string{"--max-links-per-agent=1"}})
			first := harness.StartAgent(t, bins, s, harness.AgentOpts{ID: "twin", Extra: []string{"--link=" + link}})
			first.WaitReady(t)
			second := harness.StartAgent(t, bins, s, harness.AgentOpts{ID: "twin", Extra: []string{"--link=" + link}})
			harness.WaitFor(t, 30*time.Second, "the second agent's log of its refusal", func() bool {
				return len(boundsLogLines(second.Output(), "too_many_links", "--max-links-per-agent")) > 0
			})
			if n, _ := harness.MetricSum(s.MetricsURL(), boundsServerHits, "limit", "agent_links_per_identity"); n < 1 {
				t.Fatalf("agent_links_per_identity hits %v, want at least 1", n)
			}
			if n, _ := harness.MetricSum(s.MetricsURL(), "konnectivity_network_proxy_server_agent_refusals_total", "reason", "too_many_links", "link", link); n < 1 {
				t.Fatalf("agent_refusals_total{reason=too_many_links,link=%s} = %v, want at least 1", link, n)
			}
			s.WaitAgents(t, 1)
			first.Kill()
			second.WaitReady(t)
			s.WaitAgents(t, 1)
		})
	}
}

// A client that never finishes its TLS handshake on the agent port, or a
// native agent that never says hello, is cut after
// --agent-handshake-timeout and counted; agents still get in.
func TestBoundAgentHandshake(t *testing.T) {
	pki := harness.NewPKI(t)
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{Extra: []string{"--agent-handshake-timeout=1s"}})
	addr := "127.0.0.1:" + strconv.Itoa(s.AgentPort)
	closedAfter := func(c net.Conn) time.Duration {
		t.Helper()
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err := io.Copy(io.Discard, c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the server never closed the connection")
		}
		return time.Since(start)
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{0x16, 0x03, 0x01}) // a TLS record header, and no more
	if took := closedAfter(c); took < 900*time.Millisecond {
		t.Fatalf("cut after %v, before the 1s timeout", took)
	}
	harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), boundsServerHits, 1, "limit", "agent_handshake_time")

	tc, err := tls.Dial("tcp", addr, boundsAgentTLS(t, pki, "isthmus/1"))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	closedAfter(tc) // TLS done, then silence: no hello
	harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), boundsServerHits, 2, "limit", "agent_handshake_time")

	a := harness.StartAgent(t, bins, s, harness.AgentOpts{})
	a.WaitReady(t)
}
