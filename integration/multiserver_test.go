package integration

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// TestAgentHoldsATunnelToEachListedServer: --proxy-server-host with two
// servers (127.0.0.1 and 127.0.0.2, same agent port) gives one tunnel to
// each; losing one server leaves the other serving, and the agent gets the
// lost one back by itself.
func TestAgentHoldsATunnelToEachListedServer(t *testing.T) {
	harness.LeakCheck(t)
	pki, err := certs.NewBundle(t.TempDir(), "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	harness.RegisterBundle(t, pki)
	port := harness.FreePort(t)
	s1 := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, ID: "s1", Count: 2, AgentPort: port})
	s2 := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, ID: "s2", Count: 2, AgentPort: port,
		Extra: []string{"--agent-bind-address=127.0.0.2"}})
	a := harness.StartAgent(t, bins, s1, harness.AgentOpts{Hosts: "127.0.0.1,127.0.0.2"})
	a.WaitReady(t)
	s1.WaitReady(t)
	s2.WaitReady(t)

	echo := harness.StartBackend(t, harness.Echo)
	roundTrip := func(s *harness.Server) error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := s.Dial(ctx, echo.Addr())
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		return nil
	}
	for _, s := range []*harness.Server{s1, s2} {
		if err := roundTrip(s); err != nil {
			t.Fatalf("through %s: %v", s.Opts.ID, err)
		}
	}

	agentReady := "http://127.0.0.1:" + strconv.Itoa(a.HealthPort) + "/readyz"
	s2.Kill()
	harness.WaitFor(t, 15*time.Second, "agent not ready with one server gone", func() bool {
		return harness.HTTPStatus(agentReady) == http.StatusServiceUnavailable
	})
	if err := roundTrip(s1); err != nil {
		t.Fatalf("the surviving server must keep serving: %v", err)
	}
	s2.Restart(t)
	a.WaitReady(t)
	s2.WaitReady(t)
	if err := roundTrip(s2); err != nil {
		t.Fatalf("through the restarted server: %v", err)
	}
	harness.WaitFor(t, 10*time.Second, "backend connections closed", func() bool { return echo.Open() == 0 })
}
