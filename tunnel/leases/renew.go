package leases

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// First retry of a failed renewal; later ones double up to RenewInterval.
const renewRetryMin = 500 * time.Millisecond

// renewLoop writes the lease at once, then every RenewInterval (plus up to
// 4% jitter, as component-helpers' lease controller does), until ctx ends.
func (c *Controller) renewLoop(ctx context.Context) {
	fails := failureLog{log: c.log, msg: "cannot renew the server lease; retrying"}
	renewed := c.clock.Now() // nothing published yet: the start counts as a renewal
	every(ctx, c.clock, func() time.Duration {
		err := c.renew(ctx)
		now := c.clock.Now()
		if err == nil {
			fails.succeeded(now, "server lease renewed again", "lease", c.ref)
			renewed = now
			return jitter(c.cfg.RenewInterval, 0.04)
		}
		if ctx.Err() == nil {
			c.renewFailed(&fails, err, now, renewed)
		}
		return retryDelay(fails.failures, c.cfg.RenewInterval)
	})
}

// renewFailed reports a renewal that failed at now, the last success (or
// the start) at renewed: an error once the lease is past its duration.
func (c *Controller) renewFailed(fails *failureLog, err error, now, renewed time.Time) {
	level, args := slog.LevelWarn, []any{"lease", c.ref}
	switch {
	case now.Sub(renewed) < c.cfg.Duration:
	case c.published:
		level = slog.LevelError
		args = append(args, "impact", "the lease has expired: agents counting leases no longer count this server, and other servers may cull the lease")
	default:
		level = slog.LevelError
		args = append(args, "impact", "the lease could not be published: agents counting leases do not count this server")
	}
	args = append(args, hint(err, "server", "get, create and update", c.cfg.Namespace)...)
	fails.failed(now, level, err, args...)
}

// renew writes the lease once, unless Release ran. One attempt is bounded by
// RenewInterval, so a hung call does not hold the lease past the next one.
func (c *Controller) renew(ctx context.Context) error {
	select {
	case c.own <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.own }()
	if c.released {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RenewInterval)
	defer cancel()
	err := c.write(ctx)
	if err == nil {
		c.announce()
	}
	return err
}

// write updates the last known version of the lease, or (unknown, changed
// or deleted meanwhile, e.g. culled while this server could not renew) gets
// it and then creates or updates it. The caller holds own.
func (c *Controller) write(ctx context.Context) error {
	if c.latest != nil {
		l, err := c.leases.Update(ctx, c.desired(c.latest, c.clock.Now()), metav1.UpdateOptions{})
		if err == nil {
			c.latest = l
			return nil
		}
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return fmt.Errorf("update lease: %w", err)
		}
		c.latest = nil
	}
	cur, err := c.leases.Get(ctx, c.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return c.create(ctx)
	}
	if err != nil {
		return fmt.Errorf("get lease: %w", err)
	}
	l, err := c.leases.Update(ctx, c.desired(cur, c.clock.Now()), metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update lease: %w", err)
	}
	c.latest = l
	return nil
}

func (c *Controller) create(ctx context.Context) error {
	l, err := c.leases.Create(ctx, c.desired(nil, c.clock.Now()), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create lease: %w", err)
	}
	c.latest = l
	if c.published {
		c.log.Info("server lease re-created: it had been deleted, e.g. culled as expired while this server could not renew it",
			"lease", c.ref, "valid_until", validUntil(l))
	}
	return nil
}

// desired is the server's lease as it is written at now: base (the lease as
// kube-apiserver last returned it) with holder, duration, renewTime and
// labels asserted, or a new lease when base is nil. Like ANP, the labels are
// replaced by the configured set.
func (c *Controller) desired(base *coordinationv1.Lease, now time.Time) *coordinationv1.Lease {
	var l *coordinationv1.Lease
	t := metav1.NewMicroTime(now)
	if base == nil {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: c.name, Namespace: c.cfg.Namespace}}
		l.Spec.AcquireTime = &t
	} else {
		l = base.DeepCopy()
	}
	holder := c.cfg.ServerID
	secs := int32(c.cfg.Duration / time.Second)
	l.Spec.HolderIdentity = &holder
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &t
	l.Labels = maps.Clone(c.cfg.Labels)
	return l
}

// announce logs the first successful write of the lease.
func (c *Controller) announce() {
	if c.published || c.latest == nil {
		return
	}
	c.published = true
	c.log.Info("server lease published", "lease", c.ref, "holder", c.cfg.ServerID, "labels", c.latest.Labels,
		"valid_until", validUntil(c.latest))
}

// retryDelay is the wait before retry n (1 for the first) of a failed write:
// renewRetryMin doubling, capped at interval.
func retryDelay(n int, interval time.Duration) time.Duration {
	d := renewRetryMin << min(max(n-1, 0), 20)
	return min(d, interval)
}

// jitter returns d plus a random part of up to frac*d.
func jitter(d time.Duration, frac float64) time.Duration {
	return d + time.Duration(rand.Float64()*frac*float64(d))
}
