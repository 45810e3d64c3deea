package kubeapi

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

// The agent refusal tests (TestAgentTokenRefused, TestCertificateAndToken)
// also check what the security tests ask of every refusal: the
// server logs it once, and the agent's log says which credential. The
// certificate refusals are in the integration package
// (TestAgentCertificateRefused).

// refusalLine is the server's line for a refused agent connection: its
// TLS handshake failed (a client certificate), or the agent was refused
// after it (a token, its metadata).
var refusalLine = regexp.MustCompile(`^time=(\S+) level=\w+ msg="(?:agent TLS handshake failed|agent refused)" .*remote=(\S+)`)

// expectRefusalsLoggedOnce checks that s logged refusals, and each refused
// connection once: no two refusal lines name the same client address
// within a second (a connection is refused once; an agent's retries come
// from new ports, after its backoff).
func expectRefusalsLoggedOnce(t *testing.T, s *harness.Server) {
	t.Helper()
	last := map[string]time.Time{}
	n := 0
	for _, l := range strings.Split(s.Output(), "\n") {
		m := refusalLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatalf("refusal line with a bad time: %q", l)
		}
		if prev, seen := last[m[2]]; seen && at.Sub(prev) < time.Second {
			t.Errorf("the connection from %s was refused and logged twice, %v apart: %q", m[2], at.Sub(prev), l)
		}
		last[m[2]] = at
		n++
	}
	if n == 0 {
		t.Fatal("the server logged no refusal")
	}
	t.Logf("%d refused connections from %d addresses, each logged once", n, len(last))
}

// waitAgentSays waits for a line of a's log holding every one of want: a
// refusal that says which credential the agent presented and what the
// server said of it.
func waitAgentSays(t *testing.T, a *harness.Agent, want ...string) {
	t.Helper()
	harness.WaitFor(t, 30*time.Second, a.Name+" to log "+strings.Join(want, " ... "), func() bool {
		for _, l := range strings.Split(a.Output(), "\n") {
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(l, w)
			}
			if ok {
				return true
			}
		}
		return false
	})
}

// TestNoSecretInDebugLogs: at the highest verbosity (-v=10), with client
// certificates and tokens together, leases published and counted through
// kubeconfigs, accepted and refused agents on both links and traffic
// through them, neither daemon prints a token or a key: the scan of every
// process's output at cleanup (harness/secrets.go) holds them to it.
func TestNoSecretInDebugLogs(t *testing.T) {
	t.Parallel()
	e := newTokenEnv(t, "debug-logs")
	cp := e.cp
	debug := []string{"-v=10", "--enable-lease-controller", "--lease-namespace=" + e.ns}
	s := harness.StartServer(t, bins, harness.NewPKI(t), harness.ServerOpts{Mode: harness.GRPC,
		Auth: harness.ServerAuth{Token: e.auth.Token}, Extra: debug})
	good := harness.NewTokenFile(t, e.token(t)).Path
	cp.CreateServiceAccount(t, e.ns, "not-the-agent")
	bad := harness.NewTokenFile(t, cp.Token(t, e.ns, "not-the-agent", controlplane.TokenOpts{Audience: kubeadmAudience})).Path
	agentKubeconfig := cp.AgentKubeconfig(t, "isthmus-e2e:agent:"+e.ns, e.ns)
	backend := harness.StartBackend(t, harness.Echo)
	for _, link := range links {
		ok := tokenAgent("debug-"+link, good, link)
		ok.Auth.NoClientCert = false
		ok.Extra = append(ok.Extra, "-v=10", "--kubeconfig="+agentKubeconfig, "--count-server-leases", "--lease-namespace="+e.ns)
		refused := tokenAgent("debug-refused-"+link, bad, link)
		refused.Auth.NoClientCert = false
		refused.Extra = append(refused.Extra, "-v=10")
		harness.StartAgent(t, bins, s, ok).WaitReady(t)
		harness.StartAgent(t, bins, s, refused)
		waitRefusal(t, s, "debug-refused-"+link, "wrong_service_account")
	}
	for i := range 4 {
		s.DialEcho(t, backend.Addr(), "at -v=10, dial "+strconv.Itoa(i))
	}
}
