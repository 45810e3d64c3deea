package main

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"isthmus.dev/certs"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := certs.ParseCertificatesPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}

// TestCertsCommands creates a whole PKI with the commands, checks what they
// wrote, and that nothing is overwritten without --force.
func TestCertsCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	mustRun(t, "certs", "ca", "--dir", dir)
	out := mustRun(t, "certs", "agent-port", "--dir", dir, "--host", "10.0.0.1,ctrl-1.example.com", "--host", "10.0.0.2", "--lb", "lb.example.com")
	if !strings.Contains(out, "--cluster-cert="+filepath.Join(dir, "agent-port.crt")) {
		t.Errorf("agent-port does not say which flag takes it:\n%s", out)
	}
	mustRun(t, "certs", "frontend", "--dir", dir)
	mustRun(t, "certs", "apiserver-client", "--dir", dir)
	mustRun(t, "certs", "agent", "--dir", dir, "--name", "node-1", "--key-type", "rsa", "--rsa-bits", "2048")
	mustRun(t, "certs", "kubeconfig", "--dir", dir, "--server", "https://10.0.0.1:6443",
		"--kube-ca-cert", filepath.Join(dir, "ca.crt"), "--kube-ca-key", filepath.Join(dir, "ca.key"))

	verifyPKI(t, dir)

	// Existing files: refused without --force, naming the file and the flag.
	caBefore, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	for _, args := range [][]string{
		{"certs", "ca", "--dir", dir},
		{"certs", "frontend", "--dir", dir},
		{"certs", "kubeconfig", "--dir", dir, "--server", "https://10.0.0.1:6443", "--kube-ca-cert", filepath.Join(dir, "ca.crt"), "--kube-ca-key", filepath.Join(dir, "ca.key")},
	} {
		_, err := run(t, args...)
		if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "--force") {
			t.Errorf("isthmus %s over existing files: %v", strings.Join(args, " "), err)
		}
	}
	if caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); !bytes.Equal(caBefore, caAfter) {
		t.Fatal("ca.crt changed without --force")
	}
	mustRun(t, "certs", "ca", "--dir", dir, "--force", "--key-type", "rsa")
	if caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); bytes.Equal(caBefore, caAfter) {
		t.Fatal("ca.crt not replaced with --force")
	}
	if _, ok := readCert(t, filepath.Join(dir, "ca.crt")).PublicKey.(interface{ Size() int }); !ok {
		t.Error("--key-type rsa did not give an RSA CA")
	}

	// check: all fresh; a threshold beyond their life flags them (exit 1).
	out = mustRun(t, "certs", "check", "--dir", dir)
	for _, want := range []string{"agent-port.crt", "proxy-server.kubeconfig user system:konnectivity-server", "364d"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if r := cli(t, "certs", "check", "--dir", dir, "--warn-within", "9000h"); r.code != exitFailure || !strings.Contains(r.stdout, "EXPIRING") {
		t.Errorf("check under the threshold: %+v, want exit status 1 and the table", r)
	}
}

func TestCertsCheckExpired(t *testing.T) {
	dir := t.TempDir()
	ca, err := certs.NewCA("ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	r := certs.ClientRequest("old")
	r.NotBefore, r.Validity = time.Now().Add(-48*time.Hour), time.Hour
	p, err := ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "old.crt")
	if err := certs.WriteFiles(p.Files(old, filepath.Join(dir, "old.key")), false); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, "certs", "check", old); r.code != exitFailure || !strings.Contains(r.stdout, "EXPIRED") || !strings.Contains(r.stdout, "expired 1d ") {
		t.Errorf("expired certificate: %+v", r)
	}
	if r := cli(t, "certs", "check", filepath.Join(dir, "missing.crt")); r.code != exitFailure || !strings.Contains(r.stderr, "missing.crt") {
		t.Errorf("missing file: %+v, want exit status 1 naming it", r)
	}
}

func TestCertsRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"certs", "frontend", "--dir", dir}, "create the CA first"},
		{[]string{"certs", "ca", "--dir", dir, "--rsa-bits", "2048"}, "--rsa-bits is for --key-type rsa"},
		{[]string{"certs", "ca", "--dir", dir, "--key-type", "dsa"}, "allowed are"},
		{[]string{"certs", "agent-port", "--dir", dir}, "--host"},
		{[]string{"certs", "kubeconfig", "--dir", dir}, "--server is required"},
		{[]string{"certs", "ca"}, "--dir DIR is required"},
		{[]string{"certs", "ca", "--dir", dir, "--name", "sub/ca"}, "without folders"},
		{[]string{"certs", "check", "--dir", dir, filepath.Join(dir, "ca.crt")}, "not both"},
		{[]string{"certs", "nope"}, "unknown command"},
		{[]string{"certs", "ca", "--dir", dir, "extra"}, "unexpected arguments"},
	} {
		if _, err := run(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("isthmus %s: %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	mustRun(t, "certs", "ca", "--dir", dir)
	if _, err := run(t, "certs", "agent-port", "--dir", dir, "--host", "https://10.0.0.1:8132"); err == nil || !strings.Contains(err.Error(), "neither an IP") {
		t.Errorf("URL as host: %v", err)
	}
}

// TestCertsHelpSaysWhatItWrites: every issuing command's --help says which
// files it writes where.
func TestCertsHelpSaysWhatItWrites(t *testing.T) {
	for name, u := range map[string]string{"ca": caUsage, "agent-port": agentPortUsage, "frontend": frontendUsage,
		"apiserver-client": apiserverClientUsage, "agent": agentUsage, "kubeconfig": kubeconfigUsage} {
		if !strings.Contains(u, "DIR/") || !strings.Contains(u, "0600") || !strings.Contains(u, "--dir DIR") {
			t.Errorf("%s --help does not say what it writes where", name)
		}
	}
}

// verifyPKI checks the certificates TestCertsCommands made: each verifies
// against the CA for its names and usage; keys are mode 0600.
func verifyPKI(t *testing.T, dir string) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	for _, tc := range []struct {
		file  string
		usage x509.ExtKeyUsage
		names []string
	}{
		{"agent-port.crt", x509.ExtKeyUsageServerAuth, []string{"10.0.0.1", "10.0.0.2", "ctrl-1.example.com", "lb.example.com"}},
		{"frontend.crt", x509.ExtKeyUsageServerAuth, []string{"localhost", "127.0.0.1", "::1"}},
		{"apiserver-client.crt", x509.ExtKeyUsageClientAuth, []string{""}},
		{"node-1.crt", x509.ExtKeyUsageClientAuth, []string{""}},
	} {
		c := readCert(t, filepath.Join(dir, tc.file))
		for _, n := range tc.names {
			if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: n, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
				t.Errorf("%s for %q: %v", tc.file, n, err)
			}
		}
	}
	for _, key := range []string{"ca.key", "agent-port.key", "frontend.key", "apiserver-client.key", "node-1.key", "proxy-server.kubeconfig"} {
		if st, err := os.Stat(filepath.Join(dir, key)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", key, st.Mode(), err)
		}
	}
}
