package harness

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// LeakCheck fails t if goroutines started during the test outlive it (after
// the test's own cleanups ran).
func LeakCheck(t *testing.T) {
	t.Helper()
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	t.Cleanup(func() {
		// konnectivity-client's tunnel goroutine may wait out its 10 s
		// read timeout after a client closes in the middle of a download
		// (it tries to hand the conn a packet nobody reads): give
		// goroutines that long to end before calling them leaked.
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if goleak.Find(opts...) == nil {
				break
			}
		}
		goleak.VerifyNone(t, opts...)
	})
}
