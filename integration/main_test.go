package integration

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

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

// leakCheck fails t if goroutines started during the test outlive it (after
// the test's own cleanups ran).
func leakCheck(t *testing.T) {
	t.Helper()
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}
