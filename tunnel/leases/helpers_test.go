package leases

import (
	"testing"
	"time"

	"go.uber.org/goleak"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	t0            = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	leaseResource = schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}
)

// lease builds a lease renewed (or, with renewed zero, acquired) at the
// given times; secs < 0 leaves the duration unset.
func lease(name string, acquired, renewed time.Time, secs int32) coordinationv1.Lease {
	l := coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system", ResourceVersion: "7"}}
	if !acquired.IsZero() {
		l.Spec.AcquireTime = &metav1.MicroTime{Time: acquired}
	}
	if !renewed.IsZero() {
		l.Spec.RenewTime = &metav1.MicroTime{Time: renewed}
	}
	if secs >= 0 {
		l.Spec.LeaseDurationSeconds = &secs
	}
	return l
}

func watchEvent(typ watch.EventType, l coordinationv1.Lease) watch.Event {
	return watch.Event{Type: typ, Object: &l}
}

// nowhere is a real client for a kube-apiserver that does not exist: these
// tests never call it.
func nowhere(t *testing.T) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func goodControllerConfig(t *testing.T) ControllerConfig {
	return ControllerConfig{Client: nowhere(t), Namespace: "kube-system", Labels: map[string]string{"k8s-app": "konnectivity-server"}, ServerID: "server-1"}
}

func goodCounterConfig(t *testing.T) CounterConfig {
	return CounterConfig{Client: nowhere(t), Namespace: "kube-system", Selector: "k8s-app=konnectivity-server"}
}

// waitClosed fails t unless ch closes within a generous bound (a hang, not
// a speed, is what it catches).
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: not signalled", what)
	}
}

// waitTimer waits until a goroutine has armed a timer on clk.
func waitTimer(t *testing.T, clk *clocktesting.FakeClock) {
	t.Helper()
	for range 20000 {
		if clk.HasWaiters() {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no timer armed")
}
