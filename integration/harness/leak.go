package harness

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// LeakCheck fails t if goroutines started during the test outlive it (after
// the test's own cleanups ran), but for those ignore names. Not for tests
// that run in parallel (t.Parallel): it cannot tell their goroutines
// apart; their package checks at its end (LeakCheckAtEnd).
func LeakCheck(t *testing.T, ignore ...goleak.Option) {
	t.Helper()
	opts := append([]goleak.Option{goleak.IgnoreCurrent()}, ignore...)
	t.Cleanup(func() {
		if err := findLeaks(opts); err != nil {
			t.Error(err)
		}
	})
}

// findLeaks waits for goroutines to end and reports those left.
// konnectivity-client's tunnel goroutine may wait out its 10 s read
// timeout after a client closes in the middle of a download (it tries to
// hand the conn a packet nobody reads): goroutines get that long to end
// before they are called leaked.
func findLeaks(opts []goleak.Option) error {
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = goleak.Find(opts...); err == nil {
			return nil
		}
	}
	return err
}

// MainOption changes what Main does.
type MainOption func(*mainConfig)

type mainConfig struct {
	leakAtEnd bool
	ignore    []goleak.Option
}

// LeakCheckAtEnd makes Main check, after every test and shared fixture has
// ended, that no goroutine is left but for ignore names: the leak check of
// a package whose tests run in parallel.
func LeakCheckAtEnd(ignore ...goleak.Option) MainOption {
	return func(c *mainConfig) { c.leakAtEnd, c.ignore = true, ignore }
}
