package kubeapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

// Metrics of token authentication (CONTRACTS.md).
const (
	mRefusals     = "konnectivity_network_proxy_server_agent_refusals_total"
	mTokenReviews = "konnectivity_network_proxy_server_token_reviews_total"
)

var links = []string{"native", "anp"}

// tokenEnv is one test's agent service account on the shared control
// plane, in a namespace of its own, and the token authentication flags of
// a proxy-server that accepts it (with an identity of its own).
type tokenEnv struct {
	cp   *controlplane.ControlPlane
	ns   string
	auth harness.ServerAuth // tokens only, as the kubeadm guide sets it up
}

func newTokenEnv(t *testing.T, name string) *tokenEnv {
	t.Helper()
	cp := controlplane.Shared(t)
	ns := cp.NewNamespace(t, name)
	cp.CreateServiceAccount(t, ns, kubeadmServiceAccount)
	return &tokenEnv{cp: cp, ns: ns, auth: harness.ServerAuth{NoClientCerts: true, Token: &harness.TokenAuth{
		Namespace: ns, ServiceAccount: kubeadmServiceAccount, Audience: kubeadmAudience,
		Kubeconfig: cp.ProxyServerKubeconfig(t, "isthmus-e2e:proxy-server:"+ns, ns),
	}}}
}

// token mints a token the server accepts.
func (e *tokenEnv) token(t *testing.T) string {
	t.Helper()
	return e.cp.Token(t, e.ns, kubeadmServiceAccount, controlplane.TokenOpts{Audience: kubeadmAudience})
}

// tokenAgent is AgentOpts for an agent with only a token file (path ""
// sends none) on link.
func tokenAgent(id, path, link string) harness.AgentOpts {
	return harness.AgentOpts{ID: id, Auth: harness.AgentAuth{NoClientCert: true, TokenPath: path}, Extra: []string{"--link=" + link}}
}

// refusal finds a log line of a refusal of agent id in a server's output
// and returns its reason.
func refusal(output, id string) (reason string, found bool) {
	agent := regexp.MustCompile(`agent="?` + regexp.QuoteMeta(id) + `"?(\s|$)`)
	for _, l := range strings.Split(output, "\n") {
		if m := reasonRE.FindStringSubmatch(l); m != nil && agent.MatchString(l) {
			return m[1], true
		}
	}
	return "", false
}

var reasonRE = regexp.MustCompile(`reason="?([a-z_]+)`)

// waitRefusal waits for the server's log line of a refusal of agent id
// and returns its reason, which must be one of want.
func waitRefusal(t *testing.T, s *harness.Server, id string, want ...string) string {
	t.Helper()
	var reason string
	harness.WaitFor(t, 30*time.Second, "the server to log its refusal of "+id, func() bool {
		var found bool
		reason, found = refusal(s.Output(), id)
		return found
	})
	if !slices.Contains(want, reason) {
		t.Fatalf("the server refused %s with reason %q; want one of %q", id, reason, want)
	}
	return reason
}

// TestAgentTokenRefused: a token of another service account, of another
// namespace, for another audience, of a deleted service account, garbage,
// or none, is refused on both links: the server logs the agent and the
// reason and counts it, the agent's log says which credential was refused,
// and the refused agents never carry traffic. An agent with the right token
// is then accepted by the same server.
func TestAgentTokenRefused(t *testing.T) {
	t.Parallel()
	e := newTokenEnv(t, "refused")
	s := harness.StartServer(t, bins, harness.NewPKI(t), harness.ServerOpts{Mode: harness.GRPC, Auth: e.auth})
	type started struct {
		id, link string
		reasons  []string
		a        *harness.Agent
	}
	var agents []started
	for _, c := range refusalCases(t, e) {
		path := ""
		if c.token != "" {
			path = harness.NewTokenFile(t, c.token).Path
		}
		for _, link := range links {
			id := "refused-" + c.name + "-" + link
			agents = append(agents, started{id, link, c.reasons, harness.StartAgent(t, bins, s, tokenAgent(id, path, link))})
		}
	}
	for _, a := range agents {
		reason := waitRefusal(t, s, a.id, a.reasons...)
		harness.WaitFor(t, 30*time.Second, a.id+" to log the refusal", func() bool {
			return strings.Contains(a.a.Output(), "service-account token refused: "+reason)
		})
		if n, err := harness.MetricSum(s.MetricsURL(), mRefusals, "link", a.link, "reason", reason); err != nil || n < 1 {
			t.Errorf("%s refused for %s on the %s link, but %s{link=%q,reason=%q} is %v (%v)", a.id, reason, a.link, mRefusals, a.link, reason, n, err)
		}
		t.Logf("%s: refused, reason %s", a.id, reason)
	}
	backend := harness.StartBackend(t, harness.Echo)
	expectNoTraffic(t, s, backend)
	expectRefusalsLoggedOnce(t, s) // security_test.go

	// The same server takes the right token.
	harness.StartAgent(t, bins, s, tokenAgent("accepted", harness.NewTokenFile(t, e.token(t)).Path, "native"))
	s.WaitReady(t)
	s.WaitAgents(t, 1)
	s.DialEcho(t, backend.Addr(), "the right token")
}

// refusalCase is a token the server must refuse, and the reasons the
// contract gives for it (for another audience and garbage, by where the
// server finds out).
type refusalCase struct {
	name, token string
	reasons     []string
}

func refusalCases(t *testing.T, e *tokenEnv) []refusalCase {
	t.Helper()
	cp, sa := e.cp, kubeadmServiceAccount
	other := cp.NewNamespace(t, "refused-other")
	cp.CreateServiceAccount(t, e.ns, "other-agent")
	cp.CreateServiceAccount(t, other, sa)
	// The right service account's token, then the account deleted (and
	// made again: the same name, another object, as a redeploy does).
	deleted := e.token(t)
	cp.DeleteServiceAccount(t, e.ns, sa)
	cp.WaitTokenRefused(t, deleted, kubeadmAudience)
	cp.CreateServiceAccount(t, e.ns, sa)
	aud := controlplane.TokenOpts{Audience: kubeadmAudience}
	return []refusalCase{
		{"other-sa", cp.Token(t, e.ns, "other-agent", aud), []string{"wrong_service_account"}},
		{"other-ns", cp.Token(t, other, sa, aud), []string{"wrong_namespace"}},
		{"other-audience", cp.Token(t, e.ns, sa, controlplane.TokenOpts{}), []string{"token_invalid", "wrong_audience"}},
		{"deleted-sa", deleted, []string{"token_invalid"}},
		{"garbage", garbageToken(t), []string{"token_invalid", "malformed_token"}},
		{"no-token", "", []string{"no_token"}},
	}
}

// expectNoTraffic checks that s, whose agents were all refused, holds no
// agent, is not ready, and routes no dial to backend.
func expectNoTraffic(t *testing.T, s *harness.Server, backend *harness.Backend) {
	t.Helper()
	if n, err := harness.MetricSum(s.MetricsURL(), "konnectivity_network_proxy_server_agent_links"); err != nil || n != 0 {
		t.Fatalf("the server holds %v agent links (%v) with only refused agents", n, err)
	}
	if st := harness.HTTPStatus(s.ReadyURL()); st == 200 {
		t.Fatal("the server is ready with only refused agents")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if c, err := s.Dial(ctx, backend.Addr()); err == nil {
		c.Close()
		t.Fatal("a dial went through a server that has only refused agents")
	}
	if backend.Accepted() != 0 {
		t.Fatalf("the backend was dialled %d times through refused agents", backend.Accepted())
	}
}

// garbageToken is a random string shaped like a JWT.
func garbageToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 96)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	s := base64.RawURLEncoding.EncodeToString(b)
	return s[:20] + "." + s[20:90] + "." + s[90:]
}

// TestAgentTokenRotation: the kubelet rotates the projected token (the old
// one revoked, a new one written in its place); the agent, not restarted,
// reads the file again when it next connects (here: after its server
// restarts) and is accepted with the new token, while the old token alone
// is refused.
func TestAgentTokenRotation(t *testing.T) {
	t.Parallel()
	e := newTokenEnv(t, "rotation")
	cp := e.cp
	backend := harness.StartBackend(t, harness.Echo)
	pki := harness.NewPKI(t)
	for _, link := range links {
		t.Run(link, func(t *testing.T) {
			t.Parallel()
			// Bound to an object, as the kubelet binds it to its pod:
			// deleting the object revokes the token.
			bound := cp.CreateSecret(t, e.ns, "agent-pod-"+link)
			old := cp.Token(t, e.ns, kubeadmServiceAccount, controlplane.TokenOpts{Audience: kubeadmAudience, BoundTo: bound})
			file := harness.NewTokenFile(t, old)
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.GRPC, Auth: e.auth})
			a := harness.StartAgent(t, bins, s, tokenAgent("rotating-"+link, file.Path, link))
			s.WaitReady(t)
			s.DialEcho(t, backend.Addr(), "with the first token")

			cp.DeleteSecret(t, e.ns, bound.Name)
			cp.WaitTokenRefused(t, old, kubeadmAudience)
			file.Write(t, e.token(t))

			// A new server process has no cached review of the old token.
			s.Restart(t)
			s.WaitReady(t)
			s.DialEcho(t, backend.Addr(), "with the rotated token")
			select {
			case <-a.Exited():
				t.Fatalf("the agent exited; it was to reconnect without a restart:\n%s", a.Output())
			default:
			}
			if reason, found := refusal(s.Output(), "rotating-"+link); found {
				t.Fatalf("the restarted server refused the rotated token (%s)", reason)
			}
			// The old token alone is refused.
			harness.StartAgent(t, bins, s, tokenAgent("stale-"+link, harness.NewTokenFile(t, old).Path, link))
			waitRefusal(t, s, "stale-"+link, "token_invalid")
		})
	}
}

// TestCertificateAndToken: a server with client certificates and token
// authentication together takes only agents that present both, on both
// links: a certificate without a token is refused (no_token), a token
// without a certificate fails the TLS handshake.
func TestCertificateAndToken(t *testing.T) {
	t.Parallel()
	e := newTokenEnv(t, "both")
	token := harness.NewTokenFile(t, e.token(t)).Path
	s := harness.StartServer(t, bins, harness.NewPKI(t), harness.ServerOpts{Mode: harness.GRPC,
		Auth: harness.ServerAuth{Token: e.auth.Token}})
	var certOnly, tokenOnly, both []*harness.Agent
	for _, link := range links {
		cert := tokenAgent("cert-only-"+link, "", link)
		cert.Auth.NoClientCert = false
		certOnly = append(certOnly, harness.StartAgent(t, bins, s, cert))
		tokenOnly = append(tokenOnly, harness.StartAgent(t, bins, s, tokenAgent("token-only-"+link, token, link)))
		full := tokenAgent("both-"+link, token, link)
		full.Auth.NoClientCert = false
		both = append(both, harness.StartAgent(t, bins, s, full))
	}
	for _, a := range both {
		a.WaitReady(t)
	}
	for _, link := range links {
		waitRefusal(t, s, "cert-only-"+link, "no_token")
	}
	s.WaitAgents(t, len(both))
	for _, a := range tokenOnly {
		if harness.HTTPStatus(a.ReadyURL()) == 200 {
			t.Errorf("%s, without a client certificate, is ready", a.Name)
		}
	}
	// Each agent's log says which credential was missing (security_test.go).
	for _, a := range certOnly {
		waitAgentSays(t, a, "which presents client certificate", "and no service-account token", "service-account token refused: no_token")
	}
	for _, a := range tokenOnly {
		waitAgentSays(t, a, "which presents no client certificate (--agent-cert) and service-account token from "+token, "tls: certificate required")
	}
	expectRefusalsLoggedOnce(t, s)
	s.DialEcho(t, harness.StartBackend(t, harness.Echo).Addr(), "certificate and token")
}
