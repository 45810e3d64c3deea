package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

const agentOpenConns = "konnectivity_network_proxy_agent_open_endpoint_connections"

// echoConn dials through s and checks one echo on the new connection.
func echoConn(t *testing.T, s *harness.Server, addr, msg string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := s.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := echoOn(c, msg); err != nil {
		t.Fatal(err)
	}
	return c
}

func echoOn(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(c, got); done <- err }()
	select {
	case err := <-done:
		if err == nil && string(got) != msg {
			err = fmt.Errorf("echo %q, want %q", got, msg)
		}
		return err
	case <-time.After(10 * time.Second):
		c.Close()
		return errors.New("no echo within 10s")
	}
}

// TestAgentDrainOnSIGTERM: an agent that gets SIGTERM sends DRAIN; the
// server sends new dials to the other agent, the drained agent's open
// connection keeps working, and the agent exits once it is closed.
func TestAgentDrainOnSIGTERM(t *testing.T) {
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	for _, mode := range []string{harness.GRPC, harness.HTTPConnect} {
		t.Run(mode, func(t *testing.T) {
			harness.LeakCheck(t)
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: mode})
			// The other agent is the busier one: without DRAIN, least-loaded
			// routing would send new dials to the agent being drained.
			other := harness.StartAgent(t, bins, s, harness.AgentOpts{})
			other.WaitReady(t)
			s.WaitReady(t)
			for i := range 3 {
				echoConn(t, s, echo.Addr(), fmt.Sprintf("busy %d", i))
			}
			draining := harness.StartAgent(t, bins, s, harness.AgentOpts{})
			draining.WaitReady(t)
			harness.WaitFor(t, 10*time.Second, "both agents connected", func() bool {
				return strings.Count(s.Output(), "agent connected") >= 2
			})
			open := echoConn(t, s, echo.Addr(), "before the drain")
			harness.WaitMetric(t, 10*time.Second, draining.MetricsURL(), agentOpenConns, 1)

			draining.Signal(syscall.SIGTERM)
			harness.WaitFor(t, 10*time.Second, "the server to see the DRAIN", func() bool {
				return strings.Contains(s.Output(), "agent is draining")
			})
			for i := range 4 {
				echoConn(t, s, echo.Addr(), fmt.Sprintf("new dial %d", i)).Close()
			}
			if n, err := harness.MetricSum(draining.MetricsURL(), agentOpenConns); err != nil || n != 1 {
				t.Fatalf("draining agent has %v open connections (%v); want only the one from before the drain", n, err)
			}
			if err := echoOn(open, "during the drain"); err != nil {
				t.Fatalf("the open connection of the draining agent: %v", err)
			}
			select {
			case <-draining.Exited():
				t.Fatal("the draining agent exited with a connection open")
			default:
			}
			open.Close()
			if err := draining.Wait(15 * time.Second); err != nil {
				t.Fatalf("the draining agent did not exit cleanly after its last connection closed: %v", err)
			}
		})
	}
}

// TestServerGracefulShutdown: with --graceful-shutdown-timeout, a server that
// gets SIGTERM stops taking clients at once, lets the open connection finish,
// and exits as soon as it has.
func TestServerGracefulShutdown(t *testing.T) {
	harness.LeakCheck(t)
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect,
		Extra: []string{"--graceful-shutdown-timeout=60s"}})
	a := harness.StartAgent(t, bins, s, harness.AgentOpts{})
	a.WaitReady(t)
	s.WaitReady(t)
	open := echoConn(t, s, echo.Addr(), "before shutdown")
	s.Signal(syscall.SIGTERM)
	harness.WaitFor(t, 10*time.Second, "the frontend socket to go away", func() bool {
		_, err := os.Stat(s.UDS)
		return errors.Is(err, os.ErrNotExist)
	})
	if err := echoOn(open, "during shutdown"); err != nil {
		t.Fatalf("in-flight connection during graceful shutdown: %v", err)
	}
	select {
	case <-s.Exited():
		t.Fatal("the server exited with a connection in flight")
	default:
	}
	open.Close()
	if err := s.Wait(15 * time.Second); err != nil {
		t.Fatalf("server did not exit cleanly once the last connection closed: %v", err)
	}
}

// TestShutdownEndsIdleConnections: when a server's graceful shutdown times
// out, it ends the connections still open, idle ones included, and exits;
// the agent then ends the backend's side of each. On both agent links; with
// --native-mux=isthmus those connections are spliced with no goroutine
// while idle, and must be ended all the same.
func TestShutdownEndsIdleConnections(t *testing.T) {
	for _, v := range []struct{ link, mux string }{{"native", "yamux"}, {"native", "isthmus"}, {"anp", ""}} {
		t.Run(strings.TrimSuffix(v.link+"/"+v.mux, "/"), func(t *testing.T) {
			harness.LeakCheck(t)
			pki := harness.NewPKI(t)
			echo := harness.StartBackend(t, harness.Echo)
			serverFlags := []string{"--graceful-shutdown-timeout=1s"}
			agentFlags := []string{"--link=" + v.link}
			if v.mux != "" { // the session layer at both ends
				serverFlags = append(serverFlags, "--native-mux="+v.mux)
				agentFlags = append(agentFlags, "--native-mux="+v.mux)
			}
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, Extra: serverFlags})
			a := harness.StartAgent(t, bins, s, harness.AgentOpts{Extra: agentFlags})
			a.WaitReady(t)
			s.WaitReady(t)
			var conns []net.Conn
			for i := range 5 {
				conns = append(conns, echoConn(t, s, echo.Addr(), fmt.Sprintf("idle %d", i)))
			}
			s.Signal(syscall.SIGTERM)
			if err := s.Wait(15 * time.Second); err != nil {
				t.Fatalf("server did not exit cleanly after its graceful shutdown timed out: %v", err)
			}
			for i, c := range conns {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if n, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("connection %d still open after the server exited: read %d, %v", i, n, err)
				}
			}
			harness.WaitFor(t, 15*time.Second, "the backend's connections to close", func() bool { return echo.Open() == 0 })
		})
	}
}
