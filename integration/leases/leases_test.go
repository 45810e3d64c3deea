package leases

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"isthmus.dev/integration/harness"
	tunnelleases "isthmus.dev/tunnel/leases"
	"isthmus.dev/tunnel/leases/leasestest"
)

var labels = map[string]string{"k8s-app": "konnectivity-server"}

const (
	selector = "k8s-app=konnectivity-server"
	// Short, so expiry happens within the test; whole seconds as leases are.
	duration = 2 * time.Second
	interval = 500 * time.Millisecond
	patience = 30 * time.Second // bound of every wait: a hang, not a speed
)

// TestLeasesAgainstKubeAPIServer runs every scenario against the package's
// one control plane, each in a namespace of its own. They run one after the
// other: each checks that no goroutine of the lease package outlived it.
func TestLeasesAgainstKubeAPIServer(t *testing.T) {
	k := startKube(t)
	t.Run("PublishRenewRelease", func(t *testing.T) { testPublishRenewRelease(t, k) })
	t.Run("GCCullsOnlyExpiredMatching", func(t *testing.T) { testGCCullsOnlyExpiredMatching(t, k) })
	t.Run("GCKeepsLeaseRenewedAfterList", func(t *testing.T) { testGCKeepsRenewed(t, k) })
	t.Run("CounterFollowsServers", func(t *testing.T) { testCounterFollowsServers(t, k) })
	t.Run("CounterExpiryWithoutEvents", func(t *testing.T) { testCounterExpiry(t, k) })
	t.Run("Forbidden", func(t *testing.T) { testForbidden(t, k) })
}

// metric sums the samples (counter values, or histogram counts) of name
// whose labels include the pairs.
func metric(t *testing.T, reg *prometheus.Registry, name string, pairs ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	samples:
		for _, m := range mf.Metric {
			have := map[string]string{}
			for _, l := range m.Label {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(pairs); i += 2 {
				if have[pairs[i]] != pairs[i+1] {
					continue samples
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// server starts a lease controller for id and returns it, its metrics and
// the stop of its Run.
func server(t *testing.T, client kubernetes.Interface, ns, id string, log *leasestest.Logs) (*tunnelleases.Controller, *prometheus.Registry, func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := tunnelleases.NewController(tunnelleases.ControllerConfig{Client: client, Namespace: ns, Labels: labels, ServerID: id,
		Duration: duration, RenewInterval: interval, GCInterval: interval, Log: log.Logger().With("server", id), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return c, reg, run(t, "server "+id, c.Run)
}

func getLease(t *testing.T, client kubernetes.Interface, ns, name string) (*coordinationv1.Lease, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	l, err := client.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("get lease %s/%s: %v", ns, name, err)
	}
	return l, true
}

// putLease creates or replaces a lease as another component would write it.
func putLease(t *testing.T, client kubernetes.Interface, ns, name string, lbl map[string]string, renewed time.Time, secs int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	leases := client.CoordinationV1().Leases(ns)
	l, found := getLease(t, client, ns, name)
	if !found {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	}
	l.Labels = maps.Clone(lbl)
	holder := name
	l.Spec.HolderIdentity = &holder
	l.Spec.RenewTime = &metav1.MicroTime{Time: renewed}
	if secs >= 0 {
		l.Spec.LeaseDurationSeconds = &secs
	} else {
		l.Spec.LeaseDurationSeconds = nil
	}
	var err error
	if found {
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	} else {
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("write lease %s/%s: %v", ns, name, err)
	}
}

func leaseName(id string) string { return "konnectivity-proxy-server-" + id }

func testPublishRenewRelease(t *testing.T, k *kube) {
	ns := k.cp.NewNamespace(t, "publish")
	log := leasestest.NewLogs(t)
	c, _, stop := server(t, k.admin, ns, "s1", log)

	var first *coordinationv1.Lease
	harness.WaitFor(t, patience, "the server's lease", func() bool {
		first, _ = getLease(t, k.admin, ns, leaseName("s1"))
		return first != nil
	})
	if first.Spec.HolderIdentity == nil || *first.Spec.HolderIdentity != "s1" ||
		first.Spec.LeaseDurationSeconds == nil || *first.Spec.LeaseDurationSeconds != 2 ||
		first.Spec.RenewTime == nil || first.Spec.AcquireTime == nil || !maps.Equal(first.Labels, labels) {
		t.Fatalf("published lease: %+v %+v", first.ObjectMeta, first.Spec)
	}
	harness.WaitFor(t, patience, "a renewal", func() bool {
		l, ok := getLease(t, k.admin, ns, leaseName("s1"))
		return ok && l.Spec.RenewTime.After(first.Spec.RenewTime.Time) && l.ResourceVersion != first.ResourceVersion
	})

	// Released while Run goes on: gone, and no later renewal re-creates it.
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := getLease(t, k.admin, ns, leaseName("s1")); ok {
		t.Fatal("lease still there after Release")
	}
	time.Sleep(4 * interval) // several renewal rounds
	if _, ok := getLease(t, k.admin, ns, leaseName("s1")); ok {
		t.Fatal("a renewal re-created the lease after Release")
	}
	if err := c.Release(ctx); err != nil {
		t.Errorf("second Release: %v; a lease already gone is no error", err)
	}
	stop()
	noLeftovers(t)
	for _, want := range []string{"server lease published", "server lease released", "server lease already gone at release"} {
		if log.Matching(want, "lease="+ns+"/"+leaseName("s1")) != 1 {
			t.Errorf("want one log line %q", want)
		}
	}

	// A restarted server with the same id takes over the lease left by a
	// server that stopped without releasing it.
	_, _, stop = server(t, k.admin, ns, "s2", log)
	var left *coordinationv1.Lease
	harness.WaitFor(t, patience, "s2's lease", func() bool {
		left, _ = getLease(t, k.admin, ns, leaseName("s2"))
		return left != nil
	})
	stop()
	_, _, stop = server(t, k.admin, ns, "s2", log)
	harness.WaitFor(t, patience, "the restarted s2 to renew its old lease", func() bool {
		l, ok := getLease(t, k.admin, ns, leaseName("s2"))
		return ok && l.UID == left.UID && l.Spec.RenewTime.After(left.Spec.RenewTime.Time)
	})
	stop()
	noLeftovers(t)
}

func testGCCullsOnlyExpiredMatching(t *testing.T, k *kube) {
	ns := k.cp.NewNamespace(t, "gc")
	log := leasestest.NewLogs(t)
	now := time.Now()
	putLease(t, k.admin, ns, "stale", labels, now.Add(-time.Hour), 10)
	putLease(t, k.admin, ns, "no-duration", labels, now, -1) // ANP crashes on it; it cannot be valid
	putLease(t, k.admin, ns, "fresh", labels, now, 3600)
	putLease(t, k.admin, ns, "stale-other-labels", map[string]string{"k8s-app": "kube-scheduler"}, now.Add(-time.Hour), 10)
	putLease(t, k.admin, ns, "stale-unlabelled", nil, now.Add(-time.Hour), 10)

	_, reg, stop := server(t, k.admin, ns, "gc", log)
	harness.WaitFor(t, patience, "the expired matching leases culled", func() bool {
		_, a := getLease(t, k.admin, ns, "stale")
		_, b := getLease(t, k.admin, ns, "no-duration")
		return !a && !b
	})
	harness.WaitFor(t, patience, "a few more collections", func() bool {
		return metric(t, reg, "konnectivity_network_proxy_server_lease_list_total", "http_status_code", "200", "reason", "") >= 3
	})
	stop()
	noLeftovers(t)
	for _, name := range []string{"fresh", "stale-other-labels", "stale-unlabelled", leaseName("gc")} {
		if _, ok := getLease(t, k.admin, ns, name); !ok {
			t.Errorf("lease %s was deleted", name)
		}
	}
	const p = "konnectivity_network_proxy_server_"
	if n := metric(t, reg, p+"culled_leases_count"); n != 2 {
		t.Errorf("culled_leases_count %v, want 2", n)
	}
	if n := metric(t, reg, p+"lease_delete_total", "http_status_code", "200", "reason", ""); n != 2 {
		t.Errorf("lease_delete_total{200} %v, want 2", n)
	}
	if n := metric(t, reg, p+"lease_delete_latency_seconds", "http_status_code", "200"); n != 2 {
		t.Errorf("lease_delete_latency_seconds{200} count %v, want 2", n)
	}
	if n := metric(t, reg, p+"lease_list_latency_seconds", "http_status_code", "200"); n < 3 {
		t.Errorf("lease_list_latency_seconds{200} count %v, want at least 3", n)
	}
	if log.Matching("INFO culled expired server lease", "lease="+ns+"/stale ", "holder=stale", "expired_for=") != 1 ||
		log.Matching("INFO culled expired server lease", "lease="+ns+"/no-duration ", "valid_until=never") != 1 {
		t.Error("want one log line per culled lease, naming it, its holder and how long it had been expired")
	}
}
