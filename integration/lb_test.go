package integration

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// Three servers behind a TCP load balancer; agents know only the
// balancer's address. Each keeps dialing it until it holds all three
// (--server-count), and when one server dies and a new one takes its place
// behind the balancer, the agents find the new one by themselves.
func TestAgentsBehindLoadBalancer(t *testing.T) {
	harness.LeakCheck(t)
	pki := harness.NewPKI(t)
	backend := harness.StartBackend(t, harness.Echo)
	const count = 3
	servers := make([]*harness.Server, count)
	addrs := make([]string, count)
	for i := range servers {
		servers[i] = harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, ID: "lb-" + strconv.Itoa(i+1), Count: count})
		addrs[i] = servers[i].AgentAddr()
	}
	lb := harness.StartLoadBalancer(t, addrs...)
	var agents []*harness.Agent
	for _, link := range []string{"native", "anp"} {
		agents = append(agents, harness.StartAgent(t, bins, servers[0], harness.AgentOpts{
			ID: "lb-agent-" + link, Port: lb.Port(), Extra: []string{"--link=" + link}}))
	}
	holdAll := func(servers []*harness.Server) {
		t.Helper()
		for _, a := range agents {
			a.WaitServers(t, count)
			a.WaitReady(t)
		}
		// Every server holds every agent: each agent's three links go to
		// three distinct servers.
		for _, s := range servers {
			s.WaitAgents(t, len(agents))
			s.DialEcho(t, backend.Addr(), "through "+s.Opts.ID)
		}
	}
	holdAll(servers)

	victim := servers[1]
	victim.Kill()
	for _, a := range agents {
		a.WaitServers(t, count-1)
		if st := harness.HTTPStatus(a.ReadyURL()); st == http.StatusOK {
			t.Errorf("%s is ready holding %d of %d servers", a.Name, count-1, count)
		}
	}
	// Short of a server, the agents keep dialing, with backoff: over 2 s,
	// at most one dial per agent per --sync-interval (100 ms), not a busy
	// loop against servers they already hold.
	before := lb.Accepted()
	time.Sleep(2 * time.Second)
	if dials, most := lb.Accepted()-before, len(agents)*20; dials > most {
		t.Errorf("the agents dialed the balancer %d times in 2 s holding %d of %d servers; want at most %d", dials, count-1, count, most)
	} else {
		t.Logf("holding %d of %d servers, the agents dialed the balancer %d times in 2 s", count-1, count, dials)
	}
	replacement := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, ID: "lb-4", Count: count})
	lb.Replace(victim.AgentAddr(), replacement.AgentAddr())
	start := time.Now()
	holdAll([]*harness.Server{servers[0], servers[2], replacement})
	t.Logf("agents held the replacement server %v after it joined the balancer", time.Since(start).Round(time.Millisecond))
}
