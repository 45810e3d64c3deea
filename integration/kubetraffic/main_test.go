// Package kubetraffic runs what kube-apiserver sends through Konnectivity
// in a cluster, with kubectl against a real kube-apiserver whose egress
// goes through the tunnel to a worker behind a firewall, where a kubelet
// stand-in serves with the kubelet's own streaming code
// (harness/streamkubelet): kubectl exec with stdin, port-forward, logs -f.
// Every scenario runs against isthmus (native link) and upstream ANP, in
// GRPC and HTTPConnect mode, in the same run, from one table: isthmus must
// pass; what upstream does is recorded, side by side, and printed.
package kubetraffic

import (
	"testing"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

var bins harness.Binaries

func TestMain(m *testing.M) {
	harness.Main(m, &bins, harness.LeakCheckAtEnd(controlplane.LeakOptions...))
}
