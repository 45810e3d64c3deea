package kubeapi

import (
	"context"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

// Lease timings shortened (isthmus extras) to keep the test short: a killed
// server's lease expires 4 s after its last renewal.
var leaseTimings = []string{"--lease-duration=4s", "--lease-renewal-interval=1s", "--lease-gc-interval=1s"}

const (
	leaseLabel = "k8s-app=konnectivity-server"
	leasePfx   = "konnectivity-proxy-server-"
)

// TestServerLeases: three servers publish leases; agents that count leases
// and know only a load balancer's address hold all three. A fourth server
// starts: every agent holds it within 30 s, without a restart. One server
// is killed: its lease expires, the others cull it, and every agent is
// ready again with the three left. On both links. Servers that stop
// gracefully delete their leases.
func TestServerLeases(t *testing.T) {
	t.Parallel()
	cp := controlplane.Shared(t)
	ns := cp.NewNamespace(t, "leases")
	serverFlags := append([]string{"--enable-lease-controller", "--lease-namespace=" + ns, "--lease-label=" + leaseLabel,
		"--kubeconfig=" + cp.ProxyServerKubeconfig(t, "isthmus-e2e:lease-server:"+ns, ns)}, leaseTimings...)
	pki := harness.NewPKI(t)
	backend := harness.StartBackend(t, harness.Echo)
	// --server-count=1: the count the agents need comes from the leases.
	start := func(id string) *harness.Server {
		return harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.GRPC, ID: id, Count: 1, Extra: serverFlags})
	}
	servers := []*harness.Server{start("lease-1"), start("lease-2"), start("lease-3")}
	lb := harness.StartLoadBalancer(t, servers[0].AgentAddr(), servers[1].AgentAddr(), servers[2].AgentAddr())
	waitLeases(t, cp, ns, "lease-1", "lease-2", "lease-3")

	agents := startLeaseCounters(t, servers[0], lb, ns, cp.AgentKubeconfig(t, "isthmus-e2e:lease-agent:"+ns, ns))
	holdAll := func(what string, servers []*harness.Server) {
		t.Helper()
		holdLeasedServers(t, agents, servers, time.Now().Add(30*time.Second))
		for _, s := range servers {
			s.DialEcho(t, backend.Addr(), what+" through "+s.Opts.ID)
		}
	}
	holdAll("with three servers", servers)
	for _, a := range agents {
		if n, _ := harness.MetricSum(a.MetricsURL(), "konnectivity_network_proxy_agent_lease_lists_total"); n < 1 {
			t.Errorf("%s counted servers without listing leases (lease_lists_total %v)", a.Name, n)
		}
	}

	began := time.Now()
	fourth := start("lease-4")
	lb.Add(fourth.AgentAddr())
	servers = append(servers, fourth)
	holdAll("with a fourth server", servers) // within 30 s of its start
	t.Logf("every agent held the fourth server %v after it started", time.Since(began).Round(100*time.Millisecond))

	// Killed: no graceful stop, so its lease stays until it expires and a
	// surviving server culls it.
	victim := servers[1]
	victim.Kill()
	servers = slices.Delete(servers, 1, 2)
	began = time.Now()
	waitLeases(t, cp, ns, "lease-1", "lease-3", "lease-4")
	t.Logf("the killed server's lease was culled %v after the kill", time.Since(began).Round(100*time.Millisecond))
	if culled := metricOver(servers, "konnectivity_network_proxy_server_culled_leases_count"); culled < 1 {
		t.Errorf("the killed server's lease is gone, but culled_leases_count sums to %v over the survivors", culled)
	}
	holdAll("after a server died", servers)

	// A graceful stop deletes the server's own lease. Stopping them all,
	// the last one's lease can go no other way: no server is left to cull.
	for _, s := range servers {
		if err := s.Stop(30 * time.Second); err != nil {
			t.Fatalf("graceful stop of %s: %v\n%s", s.Opts.ID, err, s.Output())
		}
	}
	waitLeases(t, cp, ns)
}

// startLeaseCounters starts an agent on each link that counts the leases
// in ns and knows only the load balancer's address (s gives the PKI).
func startLeaseCounters(t *testing.T, s *harness.Server, lb *harness.LoadBalancer, ns, kubeconfig string) []*harness.Agent {
	t.Helper()
	var agents []*harness.Agent
	for _, link := range links {
		agents = append(agents, harness.StartAgent(t, bins, s, harness.AgentOpts{ID: "counting-" + link, Port: lb.Port(),
			Extra: []string{"--link=" + link, "--count-server-leases", "--lease-namespace=" + ns,
				"--lease-label=" + leaseLabel, "--kubeconfig=" + kubeconfig}}))
	}
	return agents
}

// holdLeasedServers waits until each agent expects (by the leases) and
// holds exactly servers, and is ready, and each server holds every agent,
// before deadline (the issue gives an agent 30 s to find a new server).
func holdLeasedServers(t *testing.T, agents []*harness.Agent, servers []*harness.Server, deadline time.Time) {
	t.Helper()
	n := float64(len(servers))
	for _, a := range agents {
		harness.WaitMetric(t, time.Until(deadline), a.MetricsURL(), "konnectivity_network_proxy_agent_known_server_count", n)
		harness.WaitMetric(t, time.Until(deadline), a.MetricsURL(), "konnectivity_network_proxy_agent_open_server_connections", n)
		harness.WaitFor(t, time.Until(deadline), a.Name+" readiness", func() bool { return harness.HTTPStatus(a.ReadyURL()) == 200 })
	}
	for _, s := range servers {
		harness.WaitMetric(t, time.Until(deadline), s.MetricsURL(), "konnectivity_network_proxy_server_agent_links", float64(len(agents)))
	}
}

// metricOver sums a metric over servers (a server that does not answer
// counts 0).
func metricOver(servers []*harness.Server, name string) float64 {
	sum := 0.0
	for _, s := range servers {
		n, _ := harness.MetricSum(s.MetricsURL(), name)
		sum += n
	}
	return sum
}

// waitLeases waits until the servers' leases in ns are exactly those of
// ids (each held by its server).
func waitLeases(t *testing.T, cp *controlplane.ControlPlane, ns string, ids ...string) {
	t.Helper()
	var last []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		list, err := cp.Client.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: leaseLabel})
		cancel()
		if err != nil {
			t.Fatalf("list leases in %s: %v", ns, err)
		}
		last = last[:0]
		for _, l := range list.Items {
			holder := ""
			if l.Spec.HolderIdentity != nil {
				holder = *l.Spec.HolderIdentity
			}
			last = append(last, l.Name+" held by "+holder)
		}
		slices.Sort(last)
		want := make([]string, 0, len(ids))
		for _, id := range ids {
			want = append(want, leasePfx+id+" held by "+id)
		}
		if slices.Equal(last, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("leases in %s: %q; want %q", ns, last, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
