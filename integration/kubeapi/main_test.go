// Package kubeapi runs a real kube-apiserver through the tunnel. It is a
// package of its own so that k8s.io/apiserver (the egress renderer's
// validation) stays out of the other integration test binaries.
package kubeapi

import (
	"fmt"
	"os"
	"testing"

	"isthmus.dev/integration/harness"
)

var bins harness.Binaries

func TestMain(m *testing.M) {
	var err error
	bins, err = harness.Build(true)
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the binaries under test:", err)
		os.Exit(1)
	}
	code := m.Run()
	harness.Cleanup()
	os.Exit(code)
}
