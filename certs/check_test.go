package certs

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestCheckThresholds issues certificates around the threshold and in the
// past and future, and rates them.
func TestCheckThresholds(t *testing.T) {
	ca := newTestCA(t, KeySpec{})
	now := time.Now()
	const warn = 720 * time.Hour
	issue := func(notBefore time.Time, validity time.Duration) *Pair {
		t.Helper()
		r := ClientRequest("c")
		r.NotBefore, r.Validity = notBefore, validity
		p, err := ca.Issue(r)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		p    *Pair
		want State
	}{
		{"a year left", issue(now.Add(-time.Hour), 365*24*time.Hour), Valid},
		{"just beyond the threshold", issue(now.Add(-time.Hour), warn+2*time.Hour), Valid},
		{"ten days left", issue(now.Add(-time.Hour), 10*24*time.Hour+time.Hour), Expiring},
		{"a minute left", issue(now.Add(-time.Hour), time.Hour+time.Minute), Expiring},
		{"expired an hour ago", issue(now.Add(-48*time.Hour), 47*time.Hour), Expired},
		{"starts tomorrow", issue(now.Add(24*time.Hour), 365*24*time.Hour), NotYetValid},
	} {
		st := Check("f", []*x509.Certificate{tc.p.Cert}, now, warn)
		if len(st) != 1 || st[0].State != tc.want {
			t.Errorf("%s: %+v, want %v", tc.name, st, tc.want)
			continue
		}
		if want := tc.p.Cert.NotAfter.Sub(now); st[0].Remaining != want {
			t.Errorf("%s: remaining %v, want %v", tc.name, st[0].Remaining, want)
		}
	}
	// A threshold of zero only flags what has expired.
	if st := Check("f", []*x509.Certificate{issue(now.Add(-time.Hour), 2*time.Hour).Cert}, now, 0); st[0].State != Valid {
		t.Errorf("zero threshold: %v", st[0].State)
	}

	// A bundle file: every certificate is rated, the worst wins.
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle.crt")
	data := append(append([]byte{}, issue(now.Add(-time.Hour), 365*24*time.Hour).CertPEM...), issue(now.Add(-48*time.Hour), 47*time.Hour).CertPEM...)
	if err := os.WriteFile(bundle, data, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := CheckFile(bundle, now, warn)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || Worst(st) != Expired || st[1].Source != bundle+"[1]" {
		t.Errorf("bundle: %+v", st)
	}
	if _, err := CheckFile(filepath.Join(dir, "missing.crt"), now, warn); err == nil {
		t.Error("missing file: no error")
	}
	empty := filepath.Join(dir, "empty.crt")
	_ = os.WriteFile(empty, []byte("not pem"), 0o644)
	if _, err := CheckFile(empty, now, warn); err == nil {
		t.Error("no certificate: no error")
	}
}
