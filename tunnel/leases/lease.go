package leases

import (
	"slices"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// expiry is when l stops being valid: its renewTime, or its acquireTime when
// it was never renewed, plus leaseDurationSeconds (ANP's util.IsLeaseValid).
// ok is false for a lease missing those fields: ANP counts it as expired
// (and, without a duration, crashes; here it is simply expired).
func expiry(l *coordinationv1.Lease) (at time.Time, ok bool) {
	var last time.Time
	switch {
	case l.Spec.RenewTime != nil:
		last = l.Spec.RenewTime.Time
	case l.Spec.AcquireTime != nil:
		last = l.Spec.AcquireTime.Time
	default:
		return time.Time{}, false
	}
	if l.Spec.LeaseDurationSeconds == nil {
		return time.Time{}, false
	}
	return last.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second), true
}

// valid reports whether l is unexpired at now: renewTime+duration > now.
func valid(l *coordinationv1.Lease, now time.Time) bool {
	at, ok := expiry(l)
	return ok && at.After(now)
}

// validUntil is l's expiry for log lines.
func validUntil(l *coordinationv1.Lease) string {
	if at, ok := expiry(l); ok {
		return at.UTC().Format(time.RFC3339)
	}
	return "never"
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// expired returns the leases the garbage collector deletes at now: every
// listed lease that is not valid. The list is already filtered by the
// labels on kube-apiserver's side.
func expired(items []coordinationv1.Lease, now time.Time) []*coordinationv1.Lease {
	var out []*coordinationv1.Lease
	for i := range items {
		if !valid(&items[i], now) {
			out = append(out, &items[i])
		}
	}
	return out
}

// leaseSet is what the counter keeps of each matching lease, by name.
type leaseSet map[string]leaseInfo

type leaseInfo struct {
	expires time.Time
	ok      bool // expires is known; a lease without it never counts
}

func (s leaseSet) put(l *coordinationv1.Lease) {
	at, ok := expiry(l)
	s[l.Name] = leaseInfo{expires: at, ok: ok}
}

// valid names the leases valid at now (expiry after now), sorted.
func (s leaseSet) valid(now time.Time) []string {
	var out []string
	for name, l := range s {
		if l.ok && l.expires.After(now) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// nextExpiry is the earliest moment after now at which a lease valid at now
// expires, when the count can drop without any event; ok is false when no
// lease is valid.
func (s leaseSet) nextExpiry(now time.Time) (at time.Time, ok bool) {
	for _, l := range s {
		if l.ok && l.expires.After(now) && (!ok || l.expires.Before(at)) {
			at, ok = l.expires, true
		}
	}
	return at, ok
}

// serverCount is the count the agent uses for valid leases: at least 1, as
// ANP assumes one server when it finds no valid lease.
func serverCount(valid int) int {
	return max(valid, 1)
}
