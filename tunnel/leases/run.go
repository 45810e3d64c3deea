package leases

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
)

// runOnce guards a Run method: it may be called once.
type runOnce struct{ started atomic.Bool }

// start begins the one Run of who, or fails a second call. The context it
// returns sends client-go's own log lines, for the calls made with it, to
// log.
func (r *runOnce) start(ctx context.Context, who string, log *slog.Logger) (context.Context, error) {
	if !r.started.CompareAndSwap(false, true) {
		return ctx, fmt.Errorf("%s: Run called twice", who)
	}
	return logr.NewContext(ctx, logr.FromSlogHandler(log.Handler())), nil
}

// every runs f at once, then again after the wait f returns, until ctx ends.
func every(ctx context.Context, clk clock.Clock, f func() time.Duration) {
	t := clk.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		t.Reset(f())
	}
}
