package agent

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"

	"isthmus.dev/certs"
)

// TestANPLinkCertificateRefusalIsNamed: on the ANP link, a server that
// refuses the agent's client certificate (none, or one of another CA)
// is reported as a refusal naming the certificate, every time: the
// server's alert is read before gRPC writes its preface, whose failing
// write (broken pipe) used to hide it.
func TestANPLinkCertificateRefusalIsNamed(t *testing.T) {
	b, err := certs.NewBundle(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other, err := certs.NewBundle(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := certs.NewReloader(certs.ReloaderConfig{CertFile: b.AgentPortCert, KeyFile: b.AgentPortKey, CAFile: b.CACert})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	(&refusingServer{}).serve(t, ln, r.ServerConfig(&tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, NextProtos: []string{"h2"}}))
	for _, tc := range []struct {
		name       string
		set        func(*Config)
		credential string
		alert      string
	}{
		{"no certificate", func(c *Config) {}, "no client certificate (--agent-cert)", "certificate required"},
		{"another CA", func(c *Config) { c.AgentCert, c.AgentKey = other.AgentCert, other.AgentKey }, "client certificate " + other.AgentCert, "bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 20 {
				err := connectOnce(t, ln, func(c *Config) { c.CACert, c.Link = b.CACert, LinkANP; tc.set(c) })
				var refused *RefusedError
				if !errors.As(err, &refused) || !strings.Contains(err.Error(), tc.credential) || !strings.Contains(err.Error(), tc.alert) {
					t.Fatalf("connect %d: %v; want a RefusedError naming %q and the alert %q", i, err, tc.credential, tc.alert)
				}
			}
		})
	}
}
