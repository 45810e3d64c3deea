// Package kubeapi runs the tunnel against a real kube-apiserver with etcd:
// the kubeadm guide's deployment through the tunnel, agents' service-account
// tokens (refusals, rotation, reviews under a mass reconnect, interop with
// upstream) and server leases. It is a package of its own so that
// k8s.io/apiserver (the egress renderer's validation) and client-go stay
// out of the other integration test binaries.
//
// Its tests run in parallel on one shared control plane (each in its own
// namespaces), so goroutine leaks are checked once, at the end.
package kubeapi

import (
	"testing"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

var bins harness.Binaries

func TestMain(m *testing.M) {
	harness.Main(m, &bins, harness.LeakCheckAtEnd(controlplane.LeakOptions...))
}
