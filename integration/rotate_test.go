package integration

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// A rotated agent-port certificate is served at the next handshake, with
// no restart; the connected agent stays, and a new agent connects with it.
func TestAgentPortCertificateRotates(t *testing.T) {
	harness.LeakCheck(t)
	pki := harness.NewPKI(t)
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{})
	harness.StartAgent(t, bins, s, harness.AgentOpts{})
	s.WaitReady(t)

	caPEM, err := os.ReadFile(pki.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	agentCert, err := tls.LoadX509KeyPair(pki.AgentCert, pki.AgentKey) // the server requires agents' certificates
	if err != nil {
		t.Fatal(err)
	}
	served := func() string {
		c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.AgentPort)),
			&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{agentCert}, ServerName: "127.0.0.1",
				NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("handshake with the agent port: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := served()

	ca, err := certs.LoadCA(pki.CACert, pki.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Issue(certs.Request{CommonName: "proxy-server-rotated", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	harness.RegisterKeyPEM(t, "the rotated agent-port key", p.KeyPEM)
	if _, _, err := p.WritePair(filepath.Dir(pki.AgentPortCert), strings.TrimSuffix(filepath.Base(pki.AgentPortCert), ".crt")); err != nil {
		t.Fatal(err)
	}
	want := p.Cert.SerialNumber.String()
	harness.WaitFor(t, 10*time.Second, "the rotated certificate to be served", func() bool { return served() == want })
	if want == before {
		t.Fatal("the new certificate has the old serial")
	}
	// A new agent handshakes against the rotated certificate.
	a2 := harness.StartAgent(t, bins, s, harness.AgentOpts{})
	a2.WaitReady(t)
}
