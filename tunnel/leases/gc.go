package leases

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// gcLoop culls at once, then every GCInterval, until ctx ends.
func (c *Controller) gcLoop(ctx context.Context) {
	listFails := failureLog{log: c.log, msg: "cannot list server leases to cull expired ones; retrying"}
	deleteFails := failureLog{log: c.log, msg: "cannot cull an expired server lease; retrying"}
	every(ctx, c.clock, func() time.Duration {
		c.gc(ctx, &listFails, &deleteFails)
		return c.cfg.GCInterval
	})
}

// gc lists the leases with the labels and deletes the expired ones.
func (c *Controller) gc(ctx context.Context, listFails, deleteFails *failureLog) {
	start := time.Now()
	list, err := c.leases.List(ctx, metav1.ListOptions{LabelSelector: c.selector})
	c.metrics.lists.observe(ctx, err, time.Since(start))
	if err != nil {
		if ctx.Err() == nil {
			listFails.failed(c.clock.Now(), slog.LevelWarn, fmt.Errorf("list leases: %w", err),
				append([]any{"namespace", c.cfg.Namespace, "selector", c.selector}, hint(err, "server", "list and delete", c.cfg.Namespace)...)...)
		}
		return
	}
	listFails.succeeded(c.clock.Now(), "server leases listed again", "namespace", c.cfg.Namespace)
	for _, l := range expired(list.Items, c.clock.Now()) {
		if ctx.Err() != nil {
			return
		}
		if err := c.cull(ctx, l); err != nil && ctx.Err() == nil {
			deleteFails.failed(c.clock.Now(), slog.LevelWarn, err,
				append([]any{"lease", l.Namespace + "/" + l.Name}, hint(err, "server", "list and delete", c.cfg.Namespace)...)...)
			continue
		}
		deleteFails.succeeded(c.clock.Now(), "expired server leases culled again", "namespace", c.cfg.Namespace)
	}
}

// cull deletes the expired lease l, on condition that it is still the
// version listed: a lease renewed since is kept (kube-apiserver answers
// Conflict), as is one deleted meanwhile. Only other failures are returned.
func (c *Controller) cull(ctx context.Context, l *coordinationv1.Lease) error {
	ref := l.Namespace + "/" + l.Name
	start := time.Now()
	err := c.leases.Delete(ctx, l.Name, *metav1.NewRVDeletionPrecondition(l.ResourceVersion))
	c.metrics.observeDelete(ctx, err, time.Since(start))
	switch {
	case err == nil:
		args := []any{"lease", ref, "holder", holder(l), "valid_until", validUntil(l)}
		if at, ok := expiry(l); ok {
			args = append(args, "expired_for", c.clock.Now().Sub(at).Round(time.Second))
		}
		c.log.Info("culled expired server lease", args...)
		return nil
	case apierrors.IsNotFound(err):
		c.log.Debug("expired server lease already deleted", "lease", ref)
		return nil
	case apierrors.IsConflict(err):
		c.log.Debug("expired server lease changed since listed (renewed): kept", "lease", ref, "listed_version", l.ResourceVersion)
		return nil
	}
	return fmt.Errorf("delete expired lease: %w", err)
}
