package leasestest

import (
	"errors"
	"slices"
	"testing"
)

func TestLogs(t *testing.T) {
	l := NewLogs(t)
	log := l.Logger()
	log.Info("server lease published", "lease", "kube-system/x", "holder", "s1")
	log.With("ignored", "yes").Warn("cannot renew", "err", errors.New("boom"))
	want := []string{"INFO server lease published lease=kube-system/x holder=s1", "WARN cannot renew err=boom"}
	if got := l.All(); !slices.Equal(got, want) {
		t.Fatalf("lines %q, want %q", got, want)
	}
	if n := l.Matching("lease=kube-system/x", "holder=s1"); n != 1 {
		t.Errorf("Matching both parts: %d, want 1", n)
	}
	if n := l.Matching("cannot renew", "holder=s1"); n != 0 {
		t.Errorf("Matching parts of two lines: %d, want 0", n)
	}
	if got := l.Take(); !slices.Equal(got, want) {
		t.Errorf("Take %q, want %q", got, want)
	}
	if got := l.All(); len(got) != 0 {
		t.Errorf("after Take: %q", got)
	}
}
