package leases

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	clocktesting "k8s.io/utils/clock/testing"

	"isthmus.dev/tunnel/leases/leasestest"
)

// TestRunOnce: a second Run is refused, and client-go's log lines under
// the first one reach the injected logger.
func TestRunOnce(t *testing.T) {
	rec := leasestest.NewLogs(t)
	var r runOnce
	ctx, err := r.start(context.Background(), "server leases", rec.Logger())
	if err != nil {
		t.Fatal(err)
	}
	logr.FromContextOrDiscard(ctx).Info("from client-go", "k", "v")
	if n := rec.Matching("INFO from client-go", "k=v"); n != 1 {
		t.Errorf("client-go's line reached the logger %d times, want 1: %q", n, rec.All())
	}
	if _, err := r.start(context.Background(), "server leases", rec.Logger()); err == nil || !strings.Contains(err.Error(), "server leases: Run called twice") {
		t.Errorf("second start: %v", err)
	}
}

// TestEvery: f runs at once, then after each wait it returns, until ctx ends.
func TestEvery(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan time.Time)
	done := make(chan struct{})
	go func() {
		defer close(done)
		every(ctx, clk, func() time.Duration {
			ran <- clk.Now()
			return 10 * time.Second
		})
	}()
	next := func() time.Time {
		t.Helper()
		select {
		case at := <-ran:
			return at
		case <-time.After(20 * time.Second):
			t.Fatal("f did not run")
			return time.Time{}
		}
	}
	// The fake clock fires a timer, even of 0, when it is set.
	waitTimer(t, clk)
	clk.Step(0)
	if at := next(); !at.Equal(t0) {
		t.Errorf("first run at +%v, want at once", at.Sub(t0))
	}
	waitTimer(t, clk)
	clk.Step(10*time.Second - time.Millisecond)
	if !clk.HasWaiters() { // a timer that fires leaves the clock's waiters at once
		t.Fatal("the wait ended early")
	}
	clk.Step(time.Millisecond)
	if at := next(); !at.Equal(t0.Add(10 * time.Second)) {
		t.Errorf("second run at +%v, want +10s", at.Sub(t0))
	}
	waitTimer(t, clk)
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("every did not return after ctx ended")
	}
}
