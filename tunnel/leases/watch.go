package leases

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// Backoff between failed calls (client-go's reflector uses the same bounds),
// and the watch timeouts asked of kube-apiserver (the reflector's 5-10 min).
const (
	backoffMin      = 800 * time.Millisecond
	backoffMax      = 30 * time.Second
	watchTimeoutMin = 5 * time.Minute
	// A watch that ends sooner than this without error still backs off, so
	// a proxy closing watches at once cannot make a busy loop.
	watchShortest = time.Second
)

// errRelist ends a watch whose resource version kube-apiserver no longer
// has: the set is listed again at once.
var errRelist = errors.New("watch resource version expired")

// watchLoop keeps the set equal to kube-apiserver's matching leases: a list,
// then watches from its resource version, resumed from the last version seen
// when kube-apiserver ends one; any failure lists again after a backoff.
func (c *Counter) watchLoop(ctx context.Context) {
	fails := failureLog{log: c.log, msg: "cannot list or watch server leases; the leases last seen count until they expire; retrying"}
	delay := backoff{}
	rv := ""
	for ctx.Err() == nil {
		if rv == "" {
			var err error
			if rv, err = c.list(ctx); err != nil {
				if ctx.Err() == nil {
					fails.failed(c.clock.Now(), levelOf(err), err, c.hint(err)...)
					c.sleep(ctx, delay.next())
				}
				continue
			}
			fails.succeeded(c.clock.Now(), "server leases listed again", "namespace", c.namespace)
		}
		started := c.clock.Now()
		last, err := c.watch(ctx, rv)
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, errRelist):
			c.log.Debug("server lease watch expired; listing again", "err", err)
			rv = ""
		case err != nil:
			fails.failed(c.clock.Now(), levelOf(err), err, c.hint(err)...)
			rv = ""
			c.sleep(ctx, delay.next())
		case c.clock.Since(started) < watchShortest:
			rv = last
			c.sleep(ctx, delay.next())
		default:
			rv = last
			delay.reset()
		}
	}
}

// list replaces the set with the matching leases and returns the list's
// resource version.
func (c *Counter) list(ctx context.Context) (string, error) {
	start := time.Now()
	l, err := c.leases.List(ctx, metav1.ListOptions{LabelSelector: c.selector})
	c.metrics.lists.observe(ctx, err, time.Since(start))
	if err != nil {
		return "", fmt.Errorf("list leases in namespace %q with selector %q: %w", c.namespace, c.selector, err)
	}
	c.replace(l.Items)
	return l.ResourceVersion, nil
}

// watch applies the events of one watch from rv until kube-apiserver ends it
// (nil), it fails, or ctx ends; it returns the last resource version seen.
// The watch is stopped and drained before watch returns, so client-go's
// receiving goroutine has closed its channel and is past its last send (it
// returns on its own a moment later).
func (c *Counter) watch(ctx context.Context, rv string) (string, error) {
	timeout := int64((watchTimeoutMin + rand.N(watchTimeoutMin)) / time.Second)
	w, err := c.leases.Watch(ctx, metav1.ListOptions{LabelSelector: c.selector, ResourceVersion: rv,
		AllowWatchBookmarks: true, TimeoutSeconds: &timeout})
	c.metrics.watches.observe(ctx, err, 0)
	if err != nil {
		if isExpired(err) {
			return rv, fmt.Errorf("watch leases from version %s: %w: %w", rv, errRelist, err)
		}
		return rv, fmt.Errorf("watch leases in namespace %q with selector %q: %w", c.namespace, c.selector, err)
	}
	defer func() {
		w.Stop()
		for range w.ResultChan() {
		}
	}()
	for {
		var ev watch.Event
		var open bool
		select {
		case <-ctx.Done():
			return rv, nil
		case ev, open = <-w.ResultChan():
		}
		if !open {
			return rv, nil
		}
		if ev.Type == watch.Error {
			err := apierrors.FromObject(ev.Object)
			if isExpired(err) {
				return rv, fmt.Errorf("watch leases from version %s: %w: %w", rv, errRelist, err)
			}
			return rv, fmt.Errorf("watch leases in namespace %q: error event: %w", c.namespace, err)
		}
		if m, err := meta.Accessor(ev.Object); err == nil && m.GetResourceVersion() != "" {
			rv = m.GetResourceVersion()
		}
		c.apply(ev)
	}
}

// apply changes the set by one watch event.
func (c *Counter) apply(ev watch.Event) {
	l, ok := ev.Object.(*coordinationv1.Lease)
	if !ok {
		return
	}
	switch ev.Type { // a Bookmark only moves the resource version
	case watch.Added, watch.Modified:
		c.update(func(s leaseSet) { s.put(l) })
	case watch.Deleted:
		c.update(func(s leaseSet) { delete(s, l.Name) })
	}
}

func isExpired(err error) bool {
	return apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}

// levelOf is the log level of a failed call: an error when kube-apiserver
// refuses the agent's identity or rights (it will not heal by itself), a
// warning otherwise.
func levelOf(err error) slog.Level {
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		return slog.LevelError
	}
	return slog.LevelWarn
}

// hint is the log arguments of a failed list or watch.
func (c *Counter) hint(err error) []any {
	return append([]any{"namespace", c.namespace, "selector", c.selector}, hint(err, "agent", "list and watch", c.namespace)...)
}

// sleep waits d or until ctx ends.
func (c *Counter) sleep(ctx context.Context, d time.Duration) {
	t := c.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C():
	}
}

// backoff doubles from backoffMin to backoffMax, with jitter (each wait is
// between half and all of the current step).
type backoff struct{ step time.Duration }

func (b *backoff) next() time.Duration {
	b.step = min(max(2*b.step, backoffMin), backoffMax)
	return b.step/2 + rand.N(b.step/2+1)
}

func (b *backoff) reset() { b.step = 0 }
