package harness

import (
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
	"time"
)

// Upstream's proxy-server refuses ports outside 1024-49151 ("please do not
// try to use ephemeral port ..."), and Linux hands out ephemeral ports from
// 32768 up. FreeRegisteredPort picks a port below the ephemeral range, where
// neither the kernel nor FreePort hands ports out to others.
const (
	registeredLow  = 20000
	registeredHigh = 32767
)

// FreeRegisteredPort returns a TCP port in 20000-32767 that is free on
// 127.0.0.1 at the time of the call.
func FreeRegisteredPort(t testing.TB) int {
	t.Helper()
	for range 500 {
		p := registeredLow + rand.IntN(registeredHigh-registeredLow+1)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		return p
	}
	t.Fatalf("no free port in %d-%d after 500 tries", registeredLow, registeredHigh)
	return 0
}

// freePortFor picks the port chooser that impl's server accepts.
func freePortFor(impl Impl) func(testing.TB) int {
	if impl == Upstream {
		return FreeRegisteredPort
	}
	return FreePort
}

// Readiness differs between the implementations, and WaitReady (a 200 from
// /readyz) means:
//   - isthmus server: at least one agent link is registered.
//   - upstream server: the FIRST of --proxy-strategies has an agent (its
//     readiness asks only the first backend manager), so with
//     --proxy-strategies=destHost,... an agent without identifiers never
//     makes it ready. Not ready is 500, not 503.
//   - isthmus agent: it holds every server it expects (serverCount).
//   - upstream agent: it holds at least ONE server (a gRPC connection in
//     state Ready), whatever serverCount says; use WaitServers for more.
// Both /healthz answer 200 once the process serves; upstream binds its
// health port last, so it then also listens on the frontend and agent ports.

// WaitServers waits until the agent holds n server connections, by the
// konnectivity_network_proxy_agent_open_server_connections gauge both
// implementations export.
func (a *Agent) WaitServers(t testing.TB, n int) {
	t.Helper()
	WaitMetric(t, 30*time.Second, a.MetricsURL(), "konnectivity_network_proxy_agent_open_server_connections", float64(n))
}

// WaitAgents waits until an isthmus server holds n agent links, by its
// konnectivity_network_proxy_server_agent_links gauge.
func (s *Server) WaitAgents(t testing.TB, n int) {
	t.Helper()
	WaitMetric(t, 30*time.Second, s.MetricsURL(), "konnectivity_network_proxy_server_agent_links", float64(n))
}

// MetricsURL is the agent's /metrics on its health port (both
// implementations serve it there).
func (a *Agent) MetricsURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(a.HealthPort) + "/metrics"
}

// MetricsURL is the server's /metrics on its health port (both
// implementations serve it there).
func (s *Server) MetricsURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(s.HealthPort) + "/metrics"
}
