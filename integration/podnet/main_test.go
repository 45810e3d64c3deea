// Package podnet runs the pod networks isthmus renders for real, across
// two nodes: kube-router (BGP between the nodes) and Calico (felix, VXLAN,
// network policy), each built from the Go module proxy and started on
// network-namespace "nodes" with the arguments, environment, service
// accounts and probes of the DaemonSets that `isthmus cni render` wrote,
// against a real kube-apiserver as their datastore; then the isolated
// control plane reaches a pod on each node through the tunnel, and only
// through it.
//
// It is a package of its own: its tests are long (each starts a control
// plane and a pod network) and need root, and they run beside the other
// integration packages.
package podnet

import (
	"testing"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

var bins harness.Binaries

func TestMain(m *testing.M) {
	harness.Main(m, &bins, harness.LeakCheckAtEnd(controlplane.LeakOptions...))
}
