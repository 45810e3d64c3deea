package leases

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

func TestControllerMetricsNamesAndLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := goodControllerConfig(t)
	cfg.Registerer = reg
	c, err := NewController(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.metrics.lists.observe(ctx, nil, 3*time.Millisecond)
	c.metrics.lists.observe(ctx, apierrors.NewForbidden(leaseResource, "", errors.New("no")), time.Millisecond)
	c.metrics.observeDelete(ctx, nil, time.Millisecond)
	c.metrics.observeDelete(ctx, apierrors.NewConflict(leaseResource, "l", errors.New("precondition")), time.Millisecond)
	c.metrics.observeDelete(ctx, apierrors.NewNotFound(leaseResource, "l"), time.Millisecond)
	c.metrics.observeDelete(ctx, fmt.Errorf("delete: %w", errors.New("connection refused")), time.Millisecond)

	const p = "konnectivity_network_proxy_server_"
	expect := func(name, want string) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), p+name); err != nil {
			t.Error(err)
		}
	}
	expect("lease_list_total", `
# HELP konnectivity_network_proxy_server_lease_list_total Count of lease list calls by the garbage collection controller. Labeled by HTTP status code and reason.
# TYPE konnectivity_network_proxy_server_lease_list_total counter
konnectivity_network_proxy_server_lease_list_total{http_status_code="200",reason=""} 1
konnectivity_network_proxy_server_lease_list_total{http_status_code="403",reason="Forbidden"} 1
`)
	expect("lease_delete_total", `
# HELP konnectivity_network_proxy_server_lease_delete_total Count of lease deletion calls by the garbage collection controller. Labeled by HTTP status code and reason.
# TYPE konnectivity_network_proxy_server_lease_delete_total counter
konnectivity_network_proxy_server_lease_delete_total{http_status_code="0",reason="NoResponse"} 1
konnectivity_network_proxy_server_lease_delete_total{http_status_code="200",reason=""} 1
konnectivity_network_proxy_server_lease_delete_total{http_status_code="404",reason="NotFound"} 1
konnectivity_network_proxy_server_lease_delete_total{http_status_code="409",reason="Conflict"} 1
`)
	expect("culled_leases_count", `
# HELP konnectivity_network_proxy_server_culled_leases_count Count of expired leases that the lease garbage collection controller has culled.
# TYPE konnectivity_network_proxy_server_culled_leases_count counter
konnectivity_network_proxy_server_culled_leases_count 1
`)
	// The histograms: ANP's names, label and (default) buckets.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	hist := map[string][]string{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			if h := m.GetHistogram(); h != nil {
				var codes []string
				for _, l := range m.Label {
					codes = append(codes, l.GetName()+"="+l.GetValue())
				}
				hist[mf.GetName()] = append(hist[mf.GetName()], strings.Join(codes, ","))
				if len(h.Bucket) != len(prometheus.DefBuckets) {
					t.Errorf("%s: %d buckets, want ANP's default %d", mf.GetName(), len(h.Bucket), len(prometheus.DefBuckets))
				}
			}
		}
	}
	for name, want := range map[string][]string{
		p + "lease_list_latency_seconds":   {"http_status_code=200", "http_status_code=403"},
		p + "lease_delete_latency_seconds": {"http_status_code=0", "http_status_code=200", "http_status_code=404", "http_status_code=409"},
	} {
		if got := hist[name]; !slices.Equal(got, want) {
			t.Errorf("%s series %v, want %v", name, got, want)
		}
	}

	// A second controller on the same registry is refused, not a panic.
	if _, err := NewController(cfg); err == nil || !strings.Contains(err.Error(), "register metrics") {
		t.Errorf("second NewController on one registry: %v; want a registration error", err)
	}
}

func TestCallsAbandonedAtShutdownAreNotCounted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, counted := statusOf(ctx, context.Canceled); counted {
		t.Error("a call ended by the controller's own shutdown is counted")
	}
	// An answer from kube-apiserver is counted even then.
	if code, reason, counted := statusOf(ctx, apierrors.NewNotFound(leaseResource, "x")); !counted || code != 404 || reason != "NotFound" {
		t.Errorf("NotFound at shutdown: %d %q %v", code, reason, counted)
	}
}

func TestRetryDelay(t *testing.T) {
	interval := 15 * time.Second
	var got []time.Duration
	for n := 1; n <= 7; n++ {
		got = append(got, retryDelay(n, interval))
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, interval, interval}
	if !slices.Equal(got, want) {
		t.Errorf("retry delays %v, want %v", got, want)
	}
	if d := retryDelay(1000, interval); d != interval {
		t.Errorf("retry 1000: %v, want the interval", d)
	}
	for range 100 {
		if j := jitter(interval, 0.04); j < interval || j > interval+interval*4/100 {
			t.Fatalf("jitter(15s, 4%%) = %v", j)
		}
	}
}

func TestCounterMetricsNamesAndLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := goodCounterConfig(t)
	cfg.Registerer = reg
	c, err := NewCounter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	forbidden := apierrors.NewForbidden(leaseResource, "", errors.New("no"))
	c.metrics.lists.observe(ctx, nil, 2*time.Millisecond)
	c.metrics.lists.observe(ctx, forbidden, time.Millisecond)
	c.metrics.lists.observe(ctx, errors.New("dial tcp: connection refused"), time.Millisecond)
	c.metrics.watches.observe(ctx, nil, 0)
	c.metrics.watches.observe(ctx, nil, 0)
	c.metrics.watches.observe(ctx, apierrors.NewResourceExpired("too old"), 0)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	c.metrics.watches.observe(canceled, context.Canceled, 0) // abandoned at shutdown: not counted

	const want = `
# HELP konnectivity_network_proxy_agent_lease_lists_total Count of server lease list calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason
# TYPE konnectivity_network_proxy_agent_lease_lists_total counter
konnectivity_network_proxy_agent_lease_lists_total{http_response_code="0",reason="NoResponse"} 1
konnectivity_network_proxy_agent_lease_lists_total{http_response_code="200",reason=""} 1
konnectivity_network_proxy_agent_lease_lists_total{http_response_code="403",reason="Forbidden"} 1
# HELP konnectivity_network_proxy_agent_lease_watches_total Count of server lease watch calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason
# TYPE konnectivity_network_proxy_agent_lease_watches_total counter
konnectivity_network_proxy_agent_lease_watches_total{http_response_code="200",reason=""} 2
konnectivity_network_proxy_agent_lease_watches_total{http_response_code="410",reason="Expired"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"konnectivity_network_proxy_agent_lease_lists_total", "konnectivity_network_proxy_agent_lease_watches_total"); err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "konnectivity_network_proxy_agent_lease_list_latency_seconds" {
			continue
		}
		found = true
		var codes []string
		for _, m := range mf.Metric {
			codes = append(codes, m.Label[0].GetName()+"="+m.Label[0].GetValue())
			if got := len(m.GetHistogram().Bucket); got != len(counterLatencyBuckets) {
				t.Errorf("latency buckets %d, want ANP's %d", got, len(counterLatencyBuckets))
			}
		}
		if strings.Join(codes, " ") != "http_response_code=0 http_response_code=200 http_response_code=403" {
			t.Errorf("latency series %v", codes)
		}
	}
	if !found {
		t.Error("no lease_list_latency_seconds")
	}
	if _, err := NewCounter(cfg); err == nil || !strings.Contains(err.Error(), "register metrics") {
		t.Errorf("second counter on one registry: %v; want a registration error", err)
	}
}

func TestBackoff(t *testing.T) {
	var b backoff
	steps := []time.Duration{800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond,
		12800 * time.Millisecond, 25600 * time.Millisecond, 30 * time.Second, 30 * time.Second}
	for i, step := range steps {
		d := b.next()
		if d < step/2 || d > step {
			t.Errorf("wait %d: %v, want within [%v, %v]", i+1, d, step/2, step)
		}
	}
	b.reset()
	if d := b.next(); d > backoffMin {
		t.Errorf("after reset: %v, want at most %v", d, backoffMin)
	}
}
