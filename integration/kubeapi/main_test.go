// Package kubeapi runs a real kube-apiserver through the tunnel. It is a
// package of its own so that k8s.io/apiserver (the egress renderer's
// validation) stays out of the other integration test binaries.
package kubeapi

import (
	"testing"

	"isthmus.dev/integration/harness"
)

var bins harness.Binaries

func TestMain(m *testing.M) { harness.Main(m, &bins) }
