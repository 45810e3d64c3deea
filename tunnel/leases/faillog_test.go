package leases

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"isthmus.dev/tunnel/leases/leasestest"
)

// TestFailureLogIsRateLimited: a renewal failing every 15 s for an hour
// writes a handful of lines, not 240; a worse failure is reported at once;
// the recovery is reported once.
func TestFailureLogIsRateLimited(t *testing.T) {
	rec := leasestest.NewLogs(t)
	f := failureLog{log: rec.Logger(), msg: "cannot renew"}
	boom := errors.New("boom")
	var at []time.Duration
	for i := 0; i < 240; i++ {
		now := t0.Add(time.Duration(i) * 15 * time.Second)
		level := slog.LevelWarn
		if i >= 2 {
			level = slog.LevelError // the lease expired after 30 s
		}
		f.failed(now, level, boom, "lease", "kube-system/x")
		for _, line := range rec.Take() {
			at = append(at, now.Sub(t0))
			if !strings.Contains(line, "err=boom") || !strings.Contains(line, "lease=kube-system/x") {
				t.Errorf("line lacks the error or the lease: %s", line)
			}
		}
	}
	// 0: first (warn); 30s: expired (error, at once); then 1m, 2m, 4m, 8m,
	// 15m, 15m ... after the last line.
	want := []time.Duration{0, 30 * time.Second, 90 * time.Second, 210 * time.Second, 450 * time.Second,
		930 * time.Second, 1830 * time.Second, 2730 * time.Second}
	if !slices.Equal(at, want) {
		t.Errorf("lines at %v, want %v", at, want)
	}
	f.succeeded(t0.Add(time.Hour), "renewed again", "lease", "kube-system/x")
	lines := rec.Take()
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "INFO renewed again") || !strings.Contains(lines[0], "failures=240") {
		t.Errorf("recovery lines %q", lines)
	}
	f.succeeded(t0.Add(time.Hour+time.Second), "renewed again")
	if lines := rec.Take(); len(lines) != 0 {
		t.Errorf("a success without failures logged %q", lines)
	}
	// The next failure starts a new run, reported at once.
	f.failed(t0.Add(2*time.Hour), slog.LevelWarn, boom)
	if lines := rec.Take(); len(lines) != 1 || !strings.Contains(lines[0], "failures=1") {
		t.Errorf("first failure of a new run: %q", lines)
	}
}

// TestHint: a refusal's log line says what to grant whom, or what to check.
func TestHint(t *testing.T) {
	forbidden := apierrors.NewForbidden(leaseResource, "", errors.New("no"))
	unauthorized := apierrors.NewUnauthorized("bad token")
	for _, tc := range []struct {
		err         error
		role, verbs string
		want        string // "": no hint
	}{
		{forbidden, "server", "list and delete", `grant the server's identity (--kubeconfig) list and delete on leases.coordination.k8s.io in namespace "ns"`},
		{forbidden, "agent", "list and watch", `grant the agent's identity (--kubeconfig) list and watch on leases.coordination.k8s.io in namespace "ns"`},
		{unauthorized, "agent", "list and watch", "kube-apiserver does not accept the agent's credentials: check --kubeconfig"},
		{apierrors.NewConflict(leaseResource, "l", errors.New("changed")), "server", "update", ""},
		{errors.New("connection refused"), "server", "update", ""},
	} {
		got := hint(tc.err, tc.role, tc.verbs, "ns")
		if tc.want == "" {
			if got != nil {
				t.Errorf("%v: hint %v, want none", tc.err, got)
			}
			continue
		}
		if len(got) != 2 || got[0] != "hint" || got[1] != tc.want {
			t.Errorf("%v (%s): hint %v, want %q", tc.err, tc.role, got, tc.want)
		}
	}
}
