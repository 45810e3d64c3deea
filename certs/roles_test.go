package certs

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newTestCA(t testing.TB, key KeySpec) *CA {
	t.Helper()
	ca, err := NewCAFor(CARequest{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func pool(cas ...*CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.Cert)
	}
	return p
}

func verify(c *x509.Certificate, roots *x509.CertPool, name string, usage x509.ExtKeyUsage) error {
	_, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// TestRoleCertificates issues every role's certificate and checks chain,
// SANs and key usages: a server certificate serves exactly its hosts, and
// no server certificate is a client certificate or the other way round.
func TestRoleCertificates(t *testing.T) {
	ca := newTestCA(t, KeySpec{})
	roots := pool(ca)
	controllers := []string{"10.0.0.1", "10.0.0.2", "ctrl-1.example.com", "[fd00::1]"}
	lb := "lb.example.com"
	r, err := ServerRequest(AgentPortCN, append(slices.Clone(controllers), lb, "10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	agentPort, err := ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(agentPort.Cert.IPAddresses) != 3 || len(agentPort.Cert.DNSNames) != 2 {
		t.Errorf("SANs: IPs %v, DNS %v; want 3 distinct IPs and 2 names", agentPort.Cert.IPAddresses, agentPort.Cert.DNSNames)
	}
	for _, h := range []string{"10.0.0.1", "10.0.0.2", "ctrl-1.example.com", "fd00::1", lb} {
		if err := verify(agentPort.Cert, roots, h, x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("agent-port certificate for %s: %v", h, err)
		}
	}
	for _, h := range []string{"10.0.0.3", "other.example.com", "localhost"} {
		if err := verify(agentPort.Cert, roots, h, x509.ExtKeyUsageServerAuth); err == nil {
			t.Errorf("agent-port certificate verifies for %s, which it was not issued for", h)
		}
	}
	fr, err := ServerRequest(FrontendCN, LoopbackHosts)
	if err != nil {
		t.Fatal(err)
	}
	frontend, err := ca.Issue(fr)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := verify(frontend.Cert, roots, h, x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("frontend certificate for %s: %v", h, err)
		}
	}
	apiClient, err := ca.Issue(ClientRequest(APIServerClientCN))
	if err != nil {
		t.Fatal(err)
	}
	agent, err := ca.Issue(ClientRequest(AgentCN, "system:nodes"))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*x509.Certificate{"apiserver-client": apiClient.Cert, "agent": agent.Cert} {
		if err := verify(c, roots, "", x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("%s as client: %v", name, err)
		}
		if err := verify(c, roots, "", x509.ExtKeyUsageServerAuth); err == nil {
			t.Errorf("%s verifies as a server certificate", name)
		}
		if len(c.DNSNames)+len(c.IPAddresses) != 0 {
			t.Errorf("%s has SANs %v %v", name, c.DNSNames, c.IPAddresses)
		}
	}
	for name, c := range map[string]*x509.Certificate{"agent-port": agentPort.Cert, "frontend": frontend.Cert} {
		if err := verify(c, roots, "", x509.ExtKeyUsageClientAuth); err == nil {
			t.Errorf("%s verifies as a client certificate", name)
		}
		if c.IsCA {
			t.Errorf("%s is a CA", name)
		}
	}
	if agent.Cert.Subject.Organization[0] != "system:nodes" || agent.Cert.Subject.CommonName != AgentCN {
		t.Errorf("agent subject %v", agent.Cert.Subject)
	}
	// Another CA's roots do not verify these.
	if err := verify(agentPort.Cert, pool(newTestCA(t, KeySpec{})), "10.0.0.1", x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("agent-port certificate verifies against a foreign CA")
	}
	if _, ok := agentPort.Cert.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("default key is %T, want ECDSA", agentPort.Cert.PublicKey)
	}
}

func TestServerRequestRefusesBadHosts(t *testing.T) {
	for _, hosts := range [][]string{nil, {""}, {"https://10.0.0.1"}, {"10.0.0.1:8132"}, {"bad_name.example"}, {"-x.example"}} {
		if _, err := ServerRequest("s", hosts); err == nil {
			t.Errorf("hosts %q accepted", hosts)
		}
	}
	if _, err := newTestCA(t, KeySpec{}).Issue(Request{CommonName: "s", Server: true}); err == nil {
		t.Error("a server certificate without SANs was issued")
	}
}

// TestRSA issues an RSA CA and RSA leaves, checks sizes and the chain, and
// loads the CA back from a PKCS#1 key file, as kubeadm writes it.
func TestRSA(t *testing.T) {
	ca := newTestCA(t, KeySpec{Type: KeyRSA})
	caKey, ok := ca.Key.(*rsa.PrivateKey)
	if !ok || caKey.N.BitLen() != DefaultRSABits {
		t.Fatalf("CA key %T, want RSA-%d", ca.Key, DefaultRSABits)
	}
	r, err := ServerRequest(AgentPortCN, []string{"10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	r.Key = KeySpec{Type: KeyRSA, RSABits: 2048}
	leaf, err := ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := leaf.Cert.PublicKey.(*rsa.PublicKey)
	if !ok || pub.N.BitLen() != 2048 {
		t.Fatalf("leaf key %T, want RSA-2048", leaf.Cert.PublicKey)
	}
	if leaf.Cert.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Error("RSA server certificate without keyEncipherment")
	}
	if err := verify(leaf.Cert, pool(ca), "10.0.0.1", x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatal(err)
	}
	// An ECDSA leaf under the RSA CA.
	ec, err := ca.Issue(ClientRequest(AgentCN))
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(ec.Cert, pool(ca), "", x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(caKey)})
	if err := WriteFiles([]File{{certFile, ca.CertPEM, 0o644}, {keyFile, pkcs1, 0o600}}, false); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(certFile, keyFile)
	if err != nil {
		t.Fatalf("load CA with a PKCS#1 key: %v", err)
	}
	again, err := loaded.Issue(ClientRequest("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(again.Cert, pool(ca), "", x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}
}

func TestKeySpecValidate(t *testing.T) {
	for _, k := range []KeySpec{{}, {Type: KeyECDSA}, {Type: KeyRSA}, {Type: KeyRSA, RSABits: 4096}} {
		if err := k.Validate(); err != nil {
			t.Errorf("%+v: %v", k, err)
		}
	}
	for _, k := range []KeySpec{{Type: "ed25519"}, {Type: KeyRSA, RSABits: 1024}, {Type: KeyECDSA, RSABits: 2048}} {
		if err := k.Validate(); err == nil {
			t.Errorf("%+v accepted", k)
		}
	}
}

func TestLoadCARefuses(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, KeySpec{})
	other := newTestCA(t, KeySpec{})
	leaf, err := ca.Issue(ClientRequest("leaf"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, cert, key, want string
	}{
		{"key of another CA", write("a.crt", ca.CertPEM), write("b.key", other.KeyPEM), "does not belong"},
		{"not a CA", write("leaf.crt", leaf.CertPEM), write("leaf.key", leaf.KeyPEM), "not a CA"},
		{"no key", write("c.crt", ca.CertPEM), write("empty.key", nil), "no PEM private key"},
		{"missing", filepath.Join(dir, "nope.crt"), write("d.key", ca.KeyPEM), "no such file"},
	} {
		if _, err := LoadCA(tc.cert, tc.key); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestWriteFilesNoOverwrite: without force, an existing file stops the
// whole set before anything is written; with force it is replaced; keys
// are 0600 either way.
func TestWriteFilesNoOverwrite(t *testing.T) {
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "x.crt"), filepath.Join(dir, "x.key")
	first := []File{{key, []byte("key1"), 0o600}, {crt, []byte("crt1"), 0o644}}
	if err := WriteFiles(first, false); err != nil {
		t.Fatal(err)
	}
	// A set where only the second file exists: nothing is written.
	other := filepath.Join(dir, "y.key")
	err := WriteFiles([]File{{other, []byte("new"), 0o600}, {crt, []byte("crt2"), 0o644}}, false)
	var ee *ExistsError
	if !errors.As(err, &ee) || ee.Path != crt || !errors.Is(err, fs.ErrExist) {
		t.Fatalf("overwrite without force: %v, want ExistsError for %s", err, crt)
	}
	if _, err := os.Stat(other); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s was written although the set was refused", other)
	}
	assertFile(t, crt, "crt1", 0o644)
	if err := WriteFiles([]File{{key, []byte("key2"), 0o600}, {crt, []byte("crt2"), 0o644}}, true); err != nil {
		t.Fatal(err)
	}
	assertFile(t, key, "key2", 0o600)
	assertFile(t, crt, "crt2", 0o644)
	// A file that appears between the check and the write is not clobbered.
	if err := writeFileNew(crt, []byte("crt3"), 0o644); !errors.As(err, &ee) {
		t.Fatalf("writeFileNew over an existing file: %v", err)
	}
	assertFile(t, crt, "crt2", 0o644)
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func assertFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || string(b) != content {
		t.Errorf("%s: %q, %v; want %q", path, b, err, content)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != mode {
		t.Errorf("%s: mode %v, %v; want %v", path, st.Mode().Perm(), err, mode)
	}
}

func TestIssueNeverOutlivesCA(t *testing.T) {
	ca, err := NewCAFor(CARequest{Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Issue(ClientRequest("x"))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Cert.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter %v, want the CA's %v", p.Cert.NotAfter, ca.Cert.NotAfter)
	}
}

func TestSplitHosts(t *testing.T) {
	dns, ips, err := SplitHosts([]string{"A.Example.com.", "a.example.com", " 10.0.0.1", "[::1]", "::1", "*.svc.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dns, []string{"a.example.com", "*.svc.example"}) {
		t.Errorf("dns %v", dns)
	}
	if len(ips) != 2 || !ips[0].Equal(net.ParseIP("10.0.0.1")) || !ips[1].Equal(net.IPv6loopback) {
		t.Errorf("ips %v", ips)
	}
}
