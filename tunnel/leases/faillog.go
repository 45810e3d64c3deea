package leases

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Repeats of a failure are logged at most this often at first, then at
// doubling intervals up to failLogMax.
const (
	failLogEvery = time.Minute
	failLogMax   = 15 * time.Minute
)

// failureLog reports a failing operation that is retried, without a line per
// retry: the first failure, then at most one line per interval (doubling up
// to failLogMax) carrying the count of failures so far, a line at once when
// the failure becomes more severe, and one line when the operation succeeds
// again. It is used by one goroutine.
type failureLog struct {
	log *slog.Logger
	msg string // what fails, e.g. "cannot renew the server lease"

	failures int
	since    time.Time  // first failure of the current run
	logged   time.Time  // last line written
	level    slog.Level // of the last line written
	every    time.Duration
}

// failed records one failure at now; level is how severe it is now.
func (f *failureLog) failed(now time.Time, level slog.Level, err error, args ...any) {
	f.failures++
	if f.failures == 1 {
		f.since, f.every = now, failLogEvery
	} else if level <= f.level && now.Sub(f.logged) < f.every {
		return
	} else if level <= f.level {
		f.every = min(2*f.every, failLogMax)
	}
	f.logged, f.level = now, level
	args = append(args, "err", err, "failures", f.failures, "failing_for", now.Sub(f.since).Round(time.Second),
		"next_report_within", f.every)
	f.log.Log(context.Background(), level, f.msg, args...)
}

// succeeded records a success at now and logs the recovery after failures.
func (f *failureLog) succeeded(now time.Time, msg string, args ...any) {
	if f.failures == 0 {
		return
	}
	args = append(args, "failures", f.failures, "failed_for", now.Sub(f.since).Round(time.Second))
	f.log.Info(msg, args...)
	f.failures, f.level = 0, 0
}

// hint is the remedy for a call kube-apiserver refused, as log arguments:
// grant the identity of role ("server" or "agent") verbs on leases in
// namespace, or check its credentials.
func hint(err error, role, verbs, namespace string) []any {
	switch {
	case apierrors.IsForbidden(err):
		return []any{"hint", fmt.Sprintf("grant the %s's identity (--kubeconfig) %s on leases.coordination.k8s.io in namespace %q", role, verbs, namespace)}
	case apierrors.IsUnauthorized(err):
		return []any{"hint", fmt.Sprintf("kube-apiserver does not accept the %s's credentials: check --kubeconfig", role)}
	}
	return nil
}
