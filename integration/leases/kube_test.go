// Package leases runs the server's lease Controller and the agent's lease
// Counter (isthmus.dev/tunnel/leases) against a real kube-apiserver (with
// etcd), in process: what they claim about kube-apiserver's answers
// (labels, resourceVersion preconditions, watches, RBAC refusals) is
// checked here, not against a fake.
package leases

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"isthmus.dev/integration/harness/controlplane"
)

// kube is the package's control plane and clients of two identities.
type kube struct {
	cp     *controlplane.ControlPlane
	admin  kubernetes.Interface // system:masters
	nobody kubernetes.Interface // authenticated, granted nothing
}

// startKube starts a control plane for t (and its subtests), or skips t
// where one cannot run.
func startKube(t *testing.T) *kube {
	t.Helper()
	cp := controlplane.Start(t, controlplane.Opts{})
	return &kube{cp: cp, admin: clientset(t, cp.Config), nobody: clientset(t, cp.UserConfig(t, "isthmus-leases-nobody"))}
}

// clientset speaks protobuf to kube-apiserver, as proxy-server and
// proxy-agent do by default (--kube-api-content-type).
func clientset(t *testing.T, cfg *rest.Config) kubernetes.Interface {
	t.Helper()
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// leftovers lists the goroutines still running code of the lease package
// or a client-go watch receiver.
func leftovers() []string {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, mark := range []string{"isthmus.dev/tunnel/leases.", "(*StreamWatcher).receive"} {
			if strings.Contains(g, mark) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// run starts f (a Run method) and returns stop, which cancels it, waits for
// it to return, and then checks nothing it started is still running.
func run(t *testing.T, what string, f func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run: %v", what, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: Run did not return after its context ended", what)
		}
	}
	t.Cleanup(stop)
	return stop
}

// noLeftovers fails t if a goroutine of the lease package (or a watch
// receiver) outlived the Run calls, all returned by now. Run returns only
// after every goroutine it started has let go, but client-go's watch
// receiver closes its result channel (what Run waits for) in a deferred
// call and still has its last deferred calls to run after that, so it is
// given a moment to finish: up to 5 s, looked at every 10 ms.
func noLeftovers(t *testing.T) {
	t.Helper()
	l := leftovers()
	for i := 0; i < 500 && len(l) > 0; i++ {
		time.Sleep(10 * time.Millisecond)
		l = leftovers()
	}
	if len(l) > 0 {
		t.Errorf("%d goroutines outlived Run:\n%s", len(l), strings.Join(l, "\n\n"))
	}
}
