package leases

import (
	"maps"
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestValidity(t *testing.T) {
	var zero time.Time
	for _, tc := range []struct {
		name  string
		l     coordinationv1.Lease
		now   time.Time
		valid bool
	}{
		// ANP's gc_controller_test cases.
		{"acquired, within duration", lease("a", t0.Add(-2*time.Minute), zero, 1000), t0, true},
		{"renewed, within duration", lease("a", t0.Add(-10*time.Minute), t0.Add(-time.Minute), 120), t0, true},
		{"renewed, past duration", lease("a", t0.Add(-4*time.Minute), t0.Add(-3*time.Minute), 1), t0, false},
		// renewTime wins over acquireTime, both ways.
		{"old acquire, fresh renew", lease("a", t0.Add(-time.Hour), t0.Add(-10*time.Second), 30), t0, true},
		{"fresh acquire, old renew", lease("a", t0.Add(-10*time.Second), t0.Add(-time.Hour), 30), t0, false},
		// The boundary: valid while renewTime+duration is after now.
		{"one tick before expiry", lease("a", zero, t0.Add(-30*time.Second+time.Microsecond), 30), t0, true},
		{"at expiry", lease("a", zero, t0.Add(-30*time.Second), 30), t0, false},
		// Leases ANP cannot judge.
		{"neither time", lease("a", zero, zero, 30), t0, false},
		{"no duration", lease("a", zero, t0, -1), t0, false},
		{"zero duration", lease("a", zero, t0, 0), t0, false},
	} {
		if got := valid(&tc.l, tc.now); got != tc.valid {
			t.Errorf("%s: valid = %v, want %v", tc.name, got, tc.valid)
		}
	}
}

// TestExpiredAsTimePasses checks which leases the collector deletes at a
// clock's successive times.
func TestExpiredAsTimePasses(t *testing.T) {
	var zero time.Time
	clk := clocktesting.NewFakePassiveClock(t0)
	items := []coordinationv1.Lease{
		lease("renewed-now", zero, t0, 30),
		lease("renewed-20s-ago", zero, t0.Add(-20*time.Second), 30),
		lease("acquired-only", t0.Add(-5*time.Second), zero, 15),
		lease("long", zero, t0, 3600),
		lease("broken", zero, zero, 30),
	}
	names := func() []string {
		var out []string
		for _, l := range expired(items, clk.Now()) {
			out = append(out, l.Name)
		}
		return out
	}
	for _, step := range []struct {
		at   time.Duration
		want []string
	}{
		{0, []string{"broken"}},
		{9 * time.Second, []string{"broken"}},
		{10 * time.Second, []string{"renewed-20s-ago", "acquired-only", "broken"}},
		{30 * time.Second, []string{"renewed-now", "renewed-20s-ago", "acquired-only", "broken"}},
		{time.Hour, []string{"renewed-now", "renewed-20s-ago", "acquired-only", "long", "broken"}},
	} {
		clk.SetTime(t0.Add(step.at))
		if got := names(); !slices.Equal(got, step.want) {
			t.Errorf("at +%v: culls %v, want %v", step.at, got, step.want)
		}
	}
	// What is culled is the listed object itself: its resourceVersion is
	// the delete's precondition.
	if got := expired(items, t0); len(got) != 1 || got[0] != &items[4] {
		t.Errorf("expired returned copies, not the listed leases")
	}
}

func TestDesiredLease(t *testing.T) {
	cfg := goodControllerConfig(t)
	cfg.Labels = map[string]string{"k8s-app": "konnectivity-server", "tier": "cp"}
	c, err := NewController(cfg)
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakeClock(t0)
	c.clock = clk

	fresh := c.desired(nil, clk.Now())
	if fresh.Name != "konnectivity-proxy-server-server-1" || fresh.Namespace != "kube-system" {
		t.Errorf("new lease %s/%s", fresh.Namespace, fresh.Name)
	}
	checkSpec := func(l *coordinationv1.Lease, renewed time.Time) {
		t.Helper()
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "server-1" {
			t.Errorf("holder %v, want server-1", l.Spec.HolderIdentity)
		}
		if l.Spec.LeaseDurationSeconds == nil || *l.Spec.LeaseDurationSeconds != 30 {
			t.Errorf("duration %v, want 30", l.Spec.LeaseDurationSeconds)
		}
		if l.Spec.RenewTime == nil || !l.Spec.RenewTime.Time.Equal(renewed) {
			t.Errorf("renewTime %v, want %v", l.Spec.RenewTime, renewed)
		}
		if !maps.Equal(l.Labels, cfg.Labels) {
			t.Errorf("labels %v, want %v", l.Labels, cfg.Labels)
		}
	}
	checkSpec(fresh, t0)
	if fresh.Spec.AcquireTime == nil || !fresh.Spec.AcquireTime.Time.Equal(t0) {
		t.Errorf("new lease acquireTime %v, want %v", fresh.Spec.AcquireTime, t0)
	}
	if !valid(fresh, t0.Add(29*time.Second)) || valid(fresh, t0.Add(30*time.Second)) {
		t.Error("a new lease is not valid for exactly its duration")
	}

	// A renewal keeps what kube-apiserver returned (version, acquireTime,
	// other fields), replaces the labels as ANP does, and leaves base alone.
	clk.Step(15 * time.Second)
	base := fresh.DeepCopy()
	base.ResourceVersion = "42"
	base.Labels = map[string]string{"stale": "x"}
	base.Spec.LeaseTransitions = new(int32(3))
	renewed := c.desired(base, clk.Now())
	checkSpec(renewed, t0.Add(15*time.Second))
	if renewed.ResourceVersion != "42" || !renewed.Spec.AcquireTime.Time.Equal(t0) || *renewed.Spec.LeaseTransitions != 3 {
		t.Errorf("renewal lost fields of the base: %+v", renewed)
	}
	if base.Labels["stale"] != "x" || !base.Spec.RenewTime.Time.Equal(t0) {
		t.Error("desired modified its base")
	}
	renewed.Labels["k8s-app"] = "other"
	if c.cfg.Labels["k8s-app"] != "konnectivity-server" {
		t.Error("the lease shares its label map with the configuration")
	}
}

func setOf(items ...coordinationv1.Lease) leaseSet {
	s := leaseSet{}
	for i := range items {
		s.put(&items[i])
	}
	return s
}

func TestValidCountAndNextExpiry(t *testing.T) {
	var zero time.Time
	s := setOf(
		lease("a", zero, t0, 30),                                       // until +30s
		lease("b", t0.Add(-time.Hour), t0.Add(-20*time.Second), 30),    // renewTime wins: until +10s
		lease("c", t0.Add(-5*time.Second), zero, 15),                   // acquired only: until +10s
		lease("d", t0.Add(-10*time.Second), t0.Add(-time.Hour), 30),    // renewTime wins: expired
		lease("e", zero, zero, 30),                                     // no time: never valid
		lease("f", zero, t0, -1),                                       // no duration: never valid
		lease("g", zero, t0.Add(-30*time.Second+time.Microsecond), 30), // until +1µs
	)
	for _, step := range []struct {
		at    time.Duration
		valid []string
		next  time.Duration // -1: none
	}{
		{0, []string{"a", "b", "c", "g"}, time.Microsecond},
		{time.Microsecond, []string{"a", "b", "c"}, 10 * time.Second}, // at expiry: gone
		{10*time.Second - 1, []string{"a", "b", "c"}, 10 * time.Second},
		{10 * time.Second, []string{"a"}, 30 * time.Second},
		{30 * time.Second, nil, -1},
	} {
		now := t0.Add(step.at)
		if got := s.valid(now); !slices.Equal(got, step.valid) {
			t.Errorf("at +%v: valid %v, want %v", step.at, got, step.valid)
		}
		next, ok := s.nextExpiry(now)
		if step.next < 0 {
			if ok {
				t.Errorf("at +%v: next expiry %v, want none", step.at, next)
			}
		} else if !ok || !next.Equal(t0.Add(step.next)) {
			t.Errorf("at +%v: next expiry %v (%v), want +%v", step.at, next.Sub(t0), ok, step.next)
		}
	}
}

func TestServerCountFallsBackToOne(t *testing.T) {
	for valid, want := range map[int]int{0: 1, 1: 1, 2: 2, 7: 7} {
		if got := serverCount(valid); got != want {
			t.Errorf("serverCount(%d) = %d, want %d", valid, got, want)
		}
	}
}
