package leases

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	coordclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/utils/clock"
)

// Controller publishes and renews the server's lease and culls expired ones.
type Controller struct {
	cfg      ControllerConfig
	name     string // of the server's own lease
	ref      string // namespace/name, for logs
	selector string // cfg.Labels as a label selector
	leases   coordclient.LeaseInterface
	clock    clock.Clock
	log      *slog.Logger
	metrics  *controllerMetrics
	running  runOnce

	// own is held (a one-slot semaphore, so Release can give up when its
	// context ends) around every write of the server's own lease.
	own chan struct{}
	// Guarded by own:
	latest    *coordinationv1.Lease // as kube-apiserver last returned it; nil: unknown
	published bool                  // a write succeeded at least once
	released  bool                  // Release ran: write nothing more
}

// NewController checks cfg (zero durations mean ANP's 30s/15s/15s) and
// registers the metrics; nothing is sent to kube-apiserver before Run.
func NewController(cfg ControllerConfig) (*Controller, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newControllerMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	name := namePrefix + cfg.ServerID
	return &Controller{
		cfg:      cfg,
		name:     name,
		ref:      cfg.Namespace + "/" + name,
		selector: labels.SelectorFromSet(cfg.Labels).String(),
		leases:   cfg.Client.CoordinationV1().Leases(cfg.Namespace),
		clock:    clock.RealClock{},
		log:      cfg.Log,
		metrics:  m,
		own:      make(chan struct{}, 1),
	}, nil
}

// Run publishes the server's lease and renews it every RenewInterval
// (retrying sooner after a failure), and culls expired leases with the
// labels every GCInterval, until ctx ends. It returns after every goroutine
// it started has ended; the lease is left in place (see Release). Run may be
// called once.
func (c *Controller) Run(ctx context.Context) error {
	ctx, err := c.running.start(ctx, "server leases", c.log)
	if err != nil {
		return err
	}
	c.log.Info("server lease controller starting", "lease", c.ref, "holder", c.cfg.ServerID,
		"duration", c.cfg.Duration, "renew_interval", c.cfg.RenewInterval,
		"gc_interval", c.cfg.GCInterval, "gc_selector", c.selector)
	var wg sync.WaitGroup
	wg.Go(func() { c.renewLoop(ctx) })
	wg.Go(func() { c.gcLoop(ctx) })
	wg.Wait()
	c.log.Info("server lease controller stopped", "lease", c.ref)
	return nil
}

// Release deletes the server's lease, so agents stop counting this server at
// once rather than when the lease expires (a graceful stop). It waits for a
// renewal in flight, and no renewal writes the lease after it, even while Run
// goes on. A lease already gone is not an error.
func (c *Controller) Release(ctx context.Context) error {
	select {
	case c.own <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("release server lease %s: waiting for a renewal in flight: %w", c.ref, ctx.Err())
	}
	defer func() { <-c.own }()
	c.released = true
	err := c.leases.Delete(ctx, c.name, metav1.DeleteOptions{})
	switch {
	case apierrors.IsNotFound(err):
		c.log.Info("server lease already gone at release", "lease", c.ref)
		return nil
	case err != nil:
		return fmt.Errorf("release server lease %s: delete: %w; it expires %v after its last renewal", c.ref, err, c.cfg.Duration)
	}
	c.log.Info("server lease released", "lease", c.ref)
	return nil
}
