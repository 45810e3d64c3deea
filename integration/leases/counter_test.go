package leases

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"isthmus.dev/integration/harness"
	tunnelleases "isthmus.dev/tunnel/leases"
	"isthmus.dev/tunnel/leases/leasestest"
)

// counter starts an agent's lease counter and returns it, its metrics and
// the stop of its Run.
func counter(t *testing.T, client kubernetes.Interface, ns string, log *leasestest.Logs) (*tunnelleases.Counter, *prometheus.Registry, func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := tunnelleases.NewCounter(tunnelleases.CounterConfig{Client: client, Namespace: ns, Selector: selector,
		Log: log.Logger().With("agent", "counter"), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return c, reg, run(t, "counter", c.Run)
}

func waitSynced(t *testing.T, c *tunnelleases.Counter) {
	t.Helper()
	select {
	case <-c.Synced():
	case <-time.After(patience):
		t.Fatal("the counter never listed the leases")
	}
}

// testCounterFollowsServers: servers coming, leaving gracefully and dying
// move the agent's count, through the watch and through expiry.
func testCounterFollowsServers(t *testing.T, k *kube) {
	ns := k.cp.NewNamespace(t, "follow")
	log := leasestest.NewLogs(t)
	c, reg, stopCounter := counter(t, k.admin, ns, log)
	waitSynced(t, c)
	if n := c.Count(); n != 1 {
		t.Fatalf("no server yet: count %d, want ANP's fallback 1", n)
	}
	servers := map[string]func(){}
	ctl := map[string]interface{ Release(context.Context) error }{}
	for _, id := range []string{"a", "b", "c"} {
		s, _, stop := server(t, k.admin, ns, id, log)
		servers[id], ctl[id] = stop, s
	}
	waitCount(t, c, 3, "three servers")

	s, _, stop := server(t, k.admin, ns, "d", log)
	servers["d"], ctl["d"] = stop, s
	waitCount(t, c, 4, "a fourth server")

	// A graceful stop: the lease is deleted, the watch tells at once.
	servers["d"]()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := ctl["d"].Release(ctx); err != nil {
		t.Fatal(err)
	}
	waitCount(t, c, 3, "after d released its lease")

	// A crash: the lease stays until it expires (the count drops then),
	// then another server culls it.
	servers["c"]()
	waitCount(t, c, 2, "after c's lease expired")
	harness.WaitFor(t, patience, "c's expired lease culled", func() bool {
		_, ok := getLease(t, k.admin, ns, leaseName("c"))
		return !ok
	})
	if n := c.Count(); n != 2 {
		t.Errorf("count %d after the cull, want 2", n)
	}
	for _, id := range []string{"a", "b"} {
		servers[id]()
	}
	stopCounter()
	noLeftovers(t)

	const p = "konnectivity_network_proxy_agent_"
	if n := metric(t, reg, p+"lease_lists_total", "http_response_code", "200", "reason", ""); n < 1 {
		t.Errorf("lease_lists_total{200} %v, want at least 1", n)
	}
	if n := metric(t, reg, p+"lease_watches_total", "http_response_code", "200", "reason", ""); n < 1 {
		t.Errorf("lease_watches_total{200} %v, want at least 1", n)
	}
	if n := metric(t, reg, p+"lease_list_latency_seconds", "http_response_code", "200"); n < 1 {
		t.Errorf("lease_list_latency_seconds{200} count %v, want at least 1", n)
	}
	for _, want := range []string{"count=3", "count=4", "count=2"} {
		if log.Matching("INFO server count from leases changed", want) == 0 {
			t.Errorf("no log line of the count changing to %s", want)
		}
	}
}

// testCounterExpiry: leases nobody renews nor deletes stop counting when
// they expire, with no API event; a renewal brings them back.
func testCounterExpiry(t *testing.T, k *kube) {
	ns := k.cp.NewNamespace(t, "expiry")
	log := leasestest.NewLogs(t)
	now := time.Now()
	putLease(t, k.admin, ns, "short", labels, now, 3)
	putLease(t, k.admin, ns, "long", labels, now, 6)
	putLease(t, k.admin, ns, "other", map[string]string{"k8s-app": "kube-scheduler"}, now, 3600)
	c, _, stop := counter(t, k.admin, ns, log)
	waitSynced(t, c)
	if n := c.Count(); n != 2 {
		t.Fatalf("count %d, want the 2 matching leases", n)
	}
	waitCount(t, c, 1, "after the short lease expired")
	if _, ok := getLease(t, k.admin, ns, "short"); !ok {
		t.Fatal("the short lease is gone: the count did not drop by expiry alone")
	}
	harness.WaitFor(t, patience, "the long lease to expire too", func() bool {
		return log.Matching("WARN no valid server lease matches", "namespace="+ns) == 1
	})
	if n := c.Count(); n != 1 {
		t.Errorf("no valid lease: count %d, want ANP's fallback 1", n)
	}
	putLease(t, k.admin, ns, "short", labels, time.Now(), 3600)
	putLease(t, k.admin, ns, "long", labels, time.Now(), 3600)
	waitCount(t, c, 2, "after both leases were renewed")
	stop()
	noLeftovers(t)
}

// testForbidden: identities kube-apiserver refuses are reported with a
// remedy, once rather than at every retry, and counted.
func testForbidden(t *testing.T, k *kube) {
	ns := k.cp.NewNamespace(t, "forbidden")
	log := leasestest.NewLogs(t)

	c, reg, stop := counter(t, k.nobody, ns, log)
	const pa = "konnectivity_network_proxy_agent_"
	harness.WaitFor(t, patience, "the counter to retry its refused list", func() bool {
		return metric(t, reg, pa+"lease_lists_total", "http_response_code", "403", "reason", "Forbidden") >= 3
	})
	stop()
	select {
	case <-c.Synced():
		t.Error("Synced after refused lists")
	default:
	}
	if n := c.Count(); n != 1 {
		t.Errorf("count %d without any list, want 1", n)
	}
	if n := log.Matching("ERROR cannot list or watch server leases", "grant the agent's identity (--kubeconfig) list and watch"); n != 1 {
		t.Errorf("%d log lines for the refused lists, want 1 (with the remedy)", n)
	}

	_, sreg, stop := server(t, k.nobody, ns, "nobody", log)
	harness.WaitFor(t, patience, "the server to report its lease unpublished past its duration", func() bool {
		return log.Matching("ERROR cannot renew the server lease", "the lease could not be published") == 1
	})
	harness.WaitFor(t, patience, "the collector to retry its refused list", func() bool {
		return metric(t, sreg, "konnectivity_network_proxy_server_lease_list_total", "http_status_code", "403", "reason", "Forbidden") >= 3
	})
	stop()
	noLeftovers(t)
	for _, want := range []struct {
		parts []string
		n     int
	}{
		{[]string{"WARN cannot renew the server lease", "failures=1 ", "hint=grant the server's identity (--kubeconfig) get, create and update"}, 1},
		{[]string{"ERROR cannot renew the server lease"}, 1},
		{[]string{"WARN cannot list server leases to cull", "hint=grant the server's identity (--kubeconfig) list and delete"}, 1},
	} {
		if n := log.Matching(want.parts...); n != want.n {
			t.Errorf("%d log lines with %q, want %d", n, want.parts, want.n)
		}
	}
}
