package integration

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

// Metrics of the security tests.
const (
	secMAgentLinks = "konnectivity_network_proxy_server_agent_links"
	secMDials      = "konnectivity_network_proxy_server_frontend_dials_total"
)

// badAgentCert is an agent credential a server with --cluster-ca-cert must
// refuse in the TLS handshake.
type badAgentCert struct {
	name string
	// issue makes the certificate and key (nil: the agent presents none).
	issue func(t *testing.T, pki *certs.Bundle) (cert, key string)
	// why is what the server's log line says.
	why string
}

var badAgentCerts = []badAgentCert{
	{"none", nil, "tls: client didn't provide a certificate"},
	{"wrong CA", func(t *testing.T, _ *certs.Bundle) (string, string) {
		other := harness.NewPKI(t)
		return other.AgentCert, other.AgentKey
	}, "x509: certificate signed by unknown authority"},
	{"expired", func(t *testing.T, pki *certs.Bundle) (string, string) {
		r := certs.ClientRequest(certs.AgentCN)
		r.NotBefore, r.Validity = time.Now().Add(-48*time.Hour), 24*time.Hour
		return issueAgentCert(t, pki, "expired", r)
	}, "x509: certificate has expired or is not yet valid: current time"},
	{"not yet valid", func(t *testing.T, pki *certs.Bundle) (string, string) {
		r := certs.ClientRequest(certs.AgentCN)
		r.NotBefore = time.Now().Add(24 * time.Hour)
		return issueAgentCert(t, pki, "not-yet-valid", r)
	}, "x509: certificate has expired or is not yet valid: current time"},
	{"serverAuth only", func(t *testing.T, pki *certs.Bundle) (string, string) {
		return issueAgentCert(t, pki, "server-auth", certs.Request{CommonName: certs.AgentCN,
			IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	}, "x509: certificate specifies an incompatible key usage"},
}

// issueAgentCert issues r with pki's own CA (the one the server trusts)
// and registers its key as a secret.
func issueAgentCert(t *testing.T, pki *certs.Bundle, name string, r certs.Request) (cert, key string) {
	t.Helper()
	ca, err := certs.LoadCA(pki.CACert, pki.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	harness.RegisterKeyPEM(t, "the "+name+" agent key", p.KeyPEM)
	cert, key, err = p.WritePair(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// handshakeRefusal is the server's one line for a refused TLS client on
// the agent port.
var handshakeRefusal = regexp.MustCompile(`msg="agent TLS handshake failed" .*remote=(\S+) err=(.*)`)

// TestAgentCertificateRefused: against a server with --cluster-ca-cert, an
// agent with no client certificate, one of another CA, an expired one,
// one not yet valid, or one for serverAuth only is refused on both links:
// the server never registers it (not ready, no agent link, a dial finds
// no agent), logs the refusal once with its cause, and the agent's log
// says which credential was refused. Each agent makes one attempt (a
// backoff of an hour), so the server's lines are exactly its refusals.
func TestAgentCertificateRefused(t *testing.T) {
	t.Parallel()
	backend := harness.StartBackend(t, harness.Echo)
	for _, c := range badAgentCerts {
		for _, link := range []string{"native", "anp"} {
			t.Run(c.name+"/"+link, func(t *testing.T) {
				t.Parallel()
				pki := harness.NewPKI(t)
				s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect})
				o := harness.AgentOpts{ID: "bad-cert-" + link, Auth: harness.AgentAuth{NoClientCert: true},
					Extra: []string{"--link=" + link, "--sync-interval=1h", "--sync-interval-cap=1h"}}
				credential := "no client certificate (--agent-cert)"
				if c.issue != nil {
					cert, key := c.issue(t, pki)
					o.Extra = append(o.Extra, "--agent-cert="+cert, "--agent-key="+key)
					credential = "client certificate " + cert
				}
				a := harness.StartAgent(t, bins, s, o)
				agentSays := "proxy-server refused this agent, which presents " + credential
				harness.WaitFor(t, 30*time.Second, "the agent to log the refusal", func() bool {
					return strings.Contains(a.Output(), agentSays)
				})
				harness.WaitFor(t, 30*time.Second, "the server to log the refusal", func() bool {
					return len(handshakeRefusal.FindAllString(s.Output(), -1)) > 0
				})
				expectNoAgent(t, s, backend)
				// After the checks above, any second line would be there.
				lines := handshakeRefusal.FindAllStringSubmatch(s.Output(), -1)
				if len(lines) != 1 || !strings.Contains(lines[0][2], c.why) {
					t.Fatalf("the server logged %d refusals, %q; want one saying %q", len(lines), lines, c.why)
				}
				if n := strings.Count(a.Output(), agentSays); n != 1 {
					t.Fatalf("the agent logged its one refusal %d times", n)
				}
				select {
				case <-a.Exited():
					t.Fatalf("the refused agent exited; it was to retry:\n%s", a.Output())
				default:
				}
			})
		}
	}
}

// expectNoAgent checks that s holds no agent: not ready, no agent link,
// and a dial is answered 503 (no agent) without reaching backend.
func expectNoAgent(t *testing.T, s *harness.Server, backend *harness.Backend) {
	t.Helper()
	if st := harness.HTTPStatus(s.ReadyURL()); st != http.StatusServiceUnavailable {
		t.Fatalf("/readyz answers %d with only a refused agent; want 503", st)
	}
	if n, err := harness.MetricSum(s.MetricsURL(), secMAgentLinks); err != nil || n != 0 {
		t.Fatalf("the server holds %v agent links (%v) with only a refused agent", n, err)
	}
	before := backend.Accepted()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := s.Dial(ctx, backend.Addr())
	if err == nil {
		c.Close()
		t.Fatal("a dial went through a server whose only agent was refused")
	}
	var ce *harness.ConnectError
	if !errors.As(err, &ce) || ce.Status != http.StatusServiceUnavailable {
		t.Fatalf("dial through a server with no agent: %v; want 503 no agent", err)
	}
	harness.WaitMetric(t, 10*time.Second, s.MetricsURL(), secMDials, 1, "result", "no_agent")
	if backend.Accepted() != before {
		t.Fatal("the backend was dialled through a refused agent")
	}
}

// TestAgentCertificateRefusedThenAccepted: the same server that refused an
// agent's certificate takes the agent once it has a good one (the files
// are read again at each connect): the refusals are of the certificate,
// not of the agent or its address.
func TestAgentCertificateRefusedThenAccepted(t *testing.T) {
	t.Parallel()
	pki := harness.NewPKI(t)
	backend := harness.StartBackend(t, harness.Echo)
	s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect})
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	ca, err := certs.LoadCA(pki.CACert, pki.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(r certs.Request) {
		p, err := ca.Issue(r)
		if err != nil {
			t.Fatal(err)
		}
		harness.RegisterKeyPEM(t, "a key of the agent that gets a good certificate", p.KeyPEM)
		if _, _, err := p.WritePair(dir, "agent"); err != nil {
			t.Fatal(err)
		}
	}
	expired := certs.ClientRequest(certs.AgentCN)
	expired.NotBefore, expired.Validity = time.Now().Add(-48*time.Hour), 24*time.Hour
	write(expired)
	a := harness.StartAgent(t, bins, s, harness.AgentOpts{Auth: harness.AgentAuth{NoClientCert: true},
		Extra: []string{"--agent-cert=" + cert, "--agent-key=" + key}})
	harness.WaitFor(t, 30*time.Second, "the expired certificate refused", func() bool {
		return strings.Contains(s.Output(), "certificate has expired")
	})
	write(certs.ClientRequest(certs.AgentCN))
	a.WaitReady(t)
	s.WaitReady(t)
	s.DialEcho(t, backend.Addr(), "after the certificate was renewed")
}
