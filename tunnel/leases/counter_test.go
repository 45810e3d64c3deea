package leases

import (
	"context"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"

	"isthmus.dev/tunnel/leases/leasestest"
)

// TestCountFollowsExpiry: with no API event at all, Count drops and Changed
// is signalled at the moment each lease expires, down to ANP's fallback of 1.
func TestCountFollowsExpiry(t *testing.T) {
	rec := leasestest.NewLogs(t)
	cfg := goodCounterConfig(t)
	cfg.Log = rec.Logger()
	c, err := NewCounter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakeClock(t0)
	c.clock = clk

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.expireLoop(ctx) }()
	defer func() { cancel(); <-done }()

	if isClosed(c.Synced()) || c.Count() != 1 {
		t.Fatalf("before the first list: synced %v, count %d; want not synced, 1", isClosed(c.Synced()), c.Count())
	}
	var zero time.Time
	changed := c.Changed()
	c.replace([]coordinationv1.Lease{
		lease("s1", zero, t0, 10),                     // until +10s
		lease("s2", zero, t0.Add(5*time.Second), 15),  // until +20s
		lease("s3", zero, t0.Add(-5*time.Second), 35), // until +30s
		lease("old", zero, t0.Add(-time.Minute), 30),  // expired: not counted
	})
	waitClosed(t, c.Synced(), "Synced after the first list")
	waitClosed(t, changed, "Changed after the first list")
	if n := c.Count(); n != 3 {
		t.Fatalf("count after list %d, want 3", n)
	}
	for _, step := range []struct {
		to    time.Duration // clock position, from t0
		count int
	}{{10 * time.Second, 2}, {20 * time.Second, 1}} {
		changed = c.Changed()
		waitTimer(t, clk)
		clk.SetTime(t0.Add(step.to - time.Millisecond))
		if isClosed(changed) {
			t.Fatalf("Changed before +%v", step.to)
		}
		clk.SetTime(t0.Add(step.to))
		waitClosed(t, changed, "Changed at expiry")
		if n := c.Count(); n != step.count {
			t.Fatalf("count at +%v: %d, want %d", step.to, n, step.count)
		}
	}
	// The last lease expiring leaves the count at the fallback 1: no
	// change to signal, but a warning.
	changed = c.Changed()
	waitTimer(t, clk)
	rec.Take()
	clk.SetTime(t0.Add(30 * time.Second))
	for range 20000 {
		if c.noneValid() {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !c.noneValid() || c.Count() != 1 || isClosed(changed) {
		t.Fatalf("after the last expiry: none valid %v, count %d, changed %v; want true, 1, false", c.noneValid(), c.Count(), isClosed(changed))
	}
	if lines := rec.Take(); len(lines) != 1 || !strings.Contains(lines[0], "WARN no valid server lease matches") {
		t.Errorf("log after the last expiry: %q", lines)
	}
	if clk.HasWaiters() {
		t.Error("a timer is armed with no valid lease left")
	}

	// A renewal seen on the watch brings servers back.
	changed = c.Changed()
	now := t0.Add(30 * time.Second)
	c.apply(watchEvent(watch.Modified, lease("s1", zero, now, 10)))
	c.apply(watchEvent(watch.Added, lease("s4", zero, now, 10)))
	waitClosed(t, changed, "Changed on renewal")
	if n := c.Count(); n != 2 {
		t.Errorf("count after renewals %d, want 2", n)
	}
}

// TestRelistReplaces: a list replaces the set (a lease deleted while the
// watch was down is gone), and Synced closes only once.
func TestRelistReplaces(t *testing.T) {
	c, err := NewCounter(goodCounterConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	c.clock = clocktesting.NewFakeClock(t0)
	var zero time.Time
	c.replace([]coordinationv1.Lease{lease("a", zero, t0, 30), lease("b", zero, t0, 30), lease("c", zero, t0, 30)})
	if n := c.Count(); n != 3 {
		t.Fatalf("count %d, want 3", n)
	}
	changed := c.Changed()
	c.replace([]coordinationv1.Lease{lease("a", zero, t0, 30), lease("d", zero, t0, 30)})
	if n := c.Count(); n != 2 || !isClosed(changed) {
		t.Errorf("after relist: count %d, changed %v; want 2, true", n, isClosed(changed))
	}
	changed = c.Changed()
	c.replace([]coordinationv1.Lease{lease("a", zero, t0, 30), lease("e", zero, t0, 30)})
	if isClosed(changed) {
		t.Error("Changed signalled for a relist with the same count")
	}
}

func (c *Counter) noneValid() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.none
}

// TestApplyEvents: watch events change the set as kube-apiserver means them;
// a lease that stops matching the selector arrives as Deleted.
func TestApplyEvents(t *testing.T) {
	var zero time.Time
	c, err := NewCounter(goodCounterConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	c.clock = clocktesting.NewFakeClock(t0)
	now := t0
	ev := func(typ watch.EventType, name string, renewed time.Time) watch.Event {
		return watchEvent(typ, lease(name, zero, renewed, 30))
	}
	for _, step := range []struct {
		ev    watch.Event
		count int
	}{
		{ev(watch.Added, "a", now), 1},
		{ev(watch.Added, "b", now), 2},
		{ev(watch.Added, "c", now.Add(-time.Minute)), 2}, // expired on arrival
		{ev(watch.Modified, "c", now), 3},                // renewed
		{ev(watch.Bookmark, "", zero), 3},
		{ev(watch.Modified, "a", now.Add(-time.Minute)), 2},
		{ev(watch.Deleted, "b", now), 1},
		{ev(watch.Deleted, "c", now), 1}, // none valid: ANP's fallback
	} {
		c.apply(step.ev)
		if got := c.Count(); got != step.count {
			t.Errorf("after %s %s: count %d, want %d", step.ev.Type, step.ev.Object.(*coordinationv1.Lease).Name, got, step.count)
		}
	}
}
