package leases

import (
	"context"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	coordclient "k8s.io/client-go/kubernetes/typed/coordination/v1"

	"isthmus.dev/integration/harness"
	"isthmus.dev/tunnel/leases/leasestest"
)

// afterList is a real client whose lease List calls run hook after
// kube-apiserver answered and before the caller sees the answer: the moment
// another server renews its lease in the middle of a collection.
type afterList struct {
	kubernetes.Interface
	hook func(ctx context.Context)
}

func (a afterList) CoordinationV1() coordclient.CoordinationV1Interface {
	return afterListCoord{a.Interface.CoordinationV1(), a.hook}
}

type afterListCoord struct {
	coordclient.CoordinationV1Interface
	hook func(ctx context.Context)
}

func (a afterListCoord) Leases(ns string) coordclient.LeaseInterface {
	return afterListLeases{a.CoordinationV1Interface.Leases(ns), a.hook}
}

type afterListLeases struct {
	coordclient.LeaseInterface
	hook func(ctx context.Context)
}

func (a afterListLeases) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	l, err := a.LeaseInterface.List(ctx, opts)
	if err == nil {
		a.hook(ctx)
	}
	return l, err
}

// testGCKeepsRenewed: a lease listed as expired but renewed before the
// delete is kept: the delete carries the listed resourceVersion as a
// precondition and kube-apiserver refuses it (409), counted as ANP does.
func testGCKeepsRenewed(t *testing.T, k *kube) {
	ns := k.cp.NewNamespace(t, "gc-race")
	log := leasestest.NewLogs(t)
	putLease(t, k.admin, ns, "racer", labels, time.Now().Add(-time.Hour), 10)
	var once sync.Once
	renewed := make(chan struct{})
	// Runs on the collector's goroutine: reports, never stops the test.
	client := afterList{Interface: k.admin, hook: func(ctx context.Context) {
		once.Do(func() {
			defer close(renewed)
			leases := k.admin.CoordinationV1().Leases(ns)
			l, err := leases.Get(ctx, "racer", metav1.GetOptions{})
			if err != nil {
				t.Errorf("renew racer: %v", err)
				return
			}
			secs := int32(3600)
			l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &metav1.MicroTime{Time: time.Now()}, &secs
			if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
				t.Errorf("renew racer: %v", err)
			}
		})
	}}
	_, reg, stop := server(t, client, ns, "gc-race", log)
	const p = "konnectivity_network_proxy_server_"
	harness.WaitFor(t, patience, "the collector's delete of the renewed lease refused", func() bool {
		return metric(t, reg, p+"lease_delete_total", "http_status_code", "409", "reason", "Conflict") == 1
	})
	harness.WaitFor(t, patience, "more collections", func() bool {
		return metric(t, reg, p+"lease_list_total", "http_status_code", "200") >= 3
	})
	stop()
	noLeftovers(t)
	<-renewed
	if _, ok := getLease(t, k.admin, ns, "racer"); !ok {
		t.Fatal("the collector deleted a lease renewed after its list")
	}
	if n := metric(t, reg, p+"culled_leases_count"); n != 0 {
		t.Errorf("culled_leases_count %v, want 0", n)
	}
	if n := metric(t, reg, p+"lease_delete_total"); n != 1 {
		t.Errorf("%v delete calls, want the one refused: the renewed lease is valid in later lists", n)
	}
	if n := log.Matching("cannot cull"); n != 0 {
		t.Errorf("a refused precondition logged as a failure (%d lines)", n)
	}
}

// waitCount waits until c counts want servers, following Changed.
func waitCount(t *testing.T, c interface {
	Count() int
	Changed() <-chan struct{}
}, want int, what string) {
	t.Helper()
	deadline := time.After(patience)
	for {
		ch := c.Changed()
		if c.Count() == want {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%s: count %d, want %d", what, c.Count(), want)
		}
	}
}
