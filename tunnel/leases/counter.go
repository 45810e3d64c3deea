package leases

import (
	"context"
	"log/slog"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	coordclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/utils/clock"
)

// Counter counts the valid server leases.
type Counter struct {
	leases    coordclient.LeaseInterface
	namespace string
	selector  string
	log       *slog.Logger
	metrics   *counterMetrics
	clock     clock.Clock
	running   runOnce

	synced     chan struct{} // closed after the first successful list
	syncedOnce sync.Once
	// rearm wakes the expiry goroutine to re-read next (one slot: a pending
	// wake-up covers any later change).
	rearm chan struct{}

	mu      sync.Mutex
	set     leaseSet
	count   int           // serverCount of the valid leases at the last recount
	changed chan struct{} // closed and replaced when count changes
	next    time.Time     // earliest expiry of a valid lease; zero: none
	none    bool          // no valid lease at the last recount (warned)
}

// NewCounter checks cfg and registers the metrics; nothing is sent to
// kube-apiserver before Run. Until the first list Count is 1.
func NewCounter(cfg CounterConfig) (*Counter, error) {
	cfg, selector, err := cfg.check()
	if err != nil {
		return nil, err
	}
	m, err := newCounterMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Counter{
		leases:    cfg.Client.CoordinationV1().Leases(cfg.Namespace),
		namespace: cfg.Namespace,
		selector:  selector,
		log:       cfg.Log,
		metrics:   m,
		clock:     clock.RealClock{},
		synced:    make(chan struct{}),
		rearm:     make(chan struct{}, 1),
		set:       leaseSet{},
		count:     serverCount(0),
		changed:   make(chan struct{}),
	}, nil
}

// Run lists and watches the matching leases, and re-counts when one expires,
// until ctx ends. It returns after every goroutine it started has ended.
// Failed calls are retried with backoff; meanwhile the leases last seen keep
// counting until they expire. Run may be called once.
func (c *Counter) Run(ctx context.Context) error {
	ctx, err := c.running.start(ctx, "server lease counter", c.log)
	if err != nil {
		return err
	}
	c.log.Info("counting servers from their leases", "namespace", c.namespace, "selector", c.selector)
	var wg sync.WaitGroup
	wg.Go(func() { c.expireLoop(ctx) })
	c.watchLoop(ctx)
	wg.Wait()
	return nil
}

// Synced is closed once the first list has been counted; it stays open if
// Run ends before any list succeeded.
func (c *Counter) Synced() <-chan struct{} { return c.synced }

// Count is the number of valid matching leases at the last change (an event
// or an expiry), or 1 when there is none, as in ANP.
func (c *Counter) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count
}

// Changed returns a channel closed at the next change of Count.
func (c *Counter) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// replace makes items the whole set (a list) and marks the counter synced.
func (c *Counter) replace(items []coordinationv1.Lease) {
	c.update(func(s leaseSet) {
		clear(s)
		for i := range items {
			s.put(&items[i])
		}
	})
	c.syncedOnce.Do(func() {
		c.mu.Lock()
		n, valid := c.count, c.set.valid(c.clock.Now())
		c.mu.Unlock()
		c.log.Info("server leases listed", "count", n, "valid_leases", valid, "matching_leases", len(items))
		close(c.synced)
	})
}

// update changes the set under the lock and re-counts.
func (c *Counter) update(change func(leaseSet)) {
	c.mu.Lock()
	change(c.set)
	c.mu.Unlock()
	c.recount()
}

// recount counts the set at the clock's now, signals Changed when the count
// moved, and wakes the expiry goroutine for the new earliest expiry.
func (c *Counter) recount() {
	c.mu.Lock()
	// Read under the lock, so concurrent recounts apply in time order.
	now := c.clock.Now()
	valid := c.set.valid(now)
	next, _ := c.set.nextExpiry(now)
	prev, n := c.count, serverCount(len(valid))
	moved := n != prev
	if moved {
		c.count = n
		close(c.changed)
		c.changed = make(chan struct{})
	}
	wake := !next.Equal(c.next)
	c.next = next
	warnNone := len(valid) == 0 && !c.none
	c.none = len(valid) == 0
	c.mu.Unlock()

	if wake {
		select {
		case c.rearm <- struct{}{}:
		default:
		}
	}
	if warnNone {
		c.log.Warn("no valid server lease matches: assuming one server, as ANP does",
			"namespace", c.namespace, "selector", c.selector, "previous_count", prev)
	} else if moved && isClosed(c.synced) { // the first list is logged by replace
		c.log.Info("server count from leases changed", "count", n, "previous_count", prev, "valid_leases", valid)
	}
}

// expireLoop re-counts whenever the earliest valid lease expires.
func (c *Counter) expireLoop(ctx context.Context) {
	for {
		// Any wake-up pending is answered by reading next now.
		select {
		case <-c.rearm:
		default:
		}
		c.mu.Lock()
		next := c.next
		c.mu.Unlock()
		var t clock.Timer
		var fire <-chan time.Time
		if !next.IsZero() {
			t = c.clock.NewTimer(max(next.Sub(c.clock.Now()), 0))
			fire = t.C()
		}
		select {
		case <-ctx.Done():
		case <-c.rearm:
		case <-fire:
			c.recount()
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
