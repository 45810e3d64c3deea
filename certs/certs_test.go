package certs

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestBundleChainsAndUsages(t *testing.T) {
	dir := t.TempDir()
	b, err := NewBundle(dir, "10.0.0.9", "proxy.example")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(b.CACert, b.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA {
		t.Fatal("CA certificate is not a CA")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, tc := range []struct {
		file  string
		usage x509.ExtKeyUsage
		name  string
	}{
		{b.AgentPortCert, x509.ExtKeyUsageServerAuth, "10.0.0.9"},
		{b.AgentPortCert, x509.ExtKeyUsageServerAuth, "proxy.example"},
		{b.AgentPortCert, x509.ExtKeyUsageServerAuth, "127.0.0.1"},
		{b.FrontendCert, x509.ExtKeyUsageServerAuth, "localhost"},
		{b.ClientCert, x509.ExtKeyUsageClientAuth, ""},
		{b.AgentCert, x509.ExtKeyUsageClientAuth, ""},
	} {
		cert := loadCert(t, tc.file)
		_, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: tc.name, KeyUsages: []x509.ExtKeyUsage{tc.usage}})
		if err != nil {
			t.Errorf("%s for %q: %v", filepath.Base(tc.file), tc.name, err)
		}
	}
	// A client certificate is no server certificate.
	if _, err := loadCert(t, b.AgentCert).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("agent client certificate verifies as a server certificate")
	}
	for _, key := range []string{b.CAKey, b.AgentPortKey, b.FrontendKey, b.ClientKey, b.AgentKey} {
		st, err := os.Stat(key)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", key, st.Mode().Perm(), err)
		}
	}
	if d := time.Until(loadCert(t, b.AgentCert).NotAfter); d < 300*24*time.Hour {
		t.Errorf("issued certificate valid only %v", d)
	}
}

func TestWriteFileAtomicReplaces(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	for _, content := range []string{"one", "two"} {
		if err := WriteFileAtomic(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != content {
			t.Fatalf("read %q, %v", got, err)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func loadCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	pemBytes, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCertificatesPEM(pemBytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c[0]
}
