package kubeapi

import (
	"testing"

	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

// TestInteropTokens: upstream ANP v0.36.0's agent with a service-account
// token against our server with token authentication, and our agent with a
// token against upstream's server with token authentication (which takes
// no --cluster-ca-cert beside it), on both frontends; traffic goes through.
// A token of another service account is refused across the mix as well.
func TestInteropTokens(t *testing.T) {
	t.Parallel()
	e := newTokenEnv(t, "interop")
	e.cp.CreateServiceAccount(t, e.ns, "other-agent")
	good := harness.NewTokenFile(t, e.token(t)).Path
	bad := harness.NewTokenFile(t, e.cp.Token(t, e.ns, "other-agent", controlplane.TokenOpts{Audience: kubeadmAudience})).Path
	backend := harness.StartBackend(t, harness.Echo)
	pki := harness.NewPKI(t)
	for _, pair := range []struct{ server, agent harness.Impl }{
		{harness.Isthmus, harness.Upstream},
		{harness.Upstream, harness.Isthmus},
	} {
		for _, mode := range []string{harness.GRPC, harness.HTTPConnect} {
			t.Run(string(pair.agent)+"-agent-to-"+string(pair.server)+"-server/"+mode, func(t *testing.T) {
				t.Parallel()
				s := harness.StartServer(t, bins, pki, harness.ServerOpts{Impl: pair.server, Mode: mode, Auth: e.auth})
				wrong := harness.StartAgent(t, bins, s, harness.AgentOpts{Impl: pair.agent, ID: "wrong-sa",
					Auth: harness.AgentAuth{NoClientCert: true, TokenPath: bad}})
				if pair.server == harness.Isthmus {
					waitRefusal(t, s, "wrong-sa", "wrong_service_account")
				}
				a := harness.StartAgent(t, bins, s, harness.AgentOpts{Impl: pair.agent, ID: "good",
					Auth: harness.AgentAuth{NoClientCert: true, TokenPath: good}})
				a.WaitReady(t)
				s.WaitReady(t)
				// Only the good agent is held: dials go through it.
				for i := range 5 {
					s.DialEcho(t, backend.Addr(), "token interop "+string(rune('a'+i)))
				}
				select {
				case <-wrong.Exited():
				default:
					if st := harness.HTTPStatus(wrong.ReadyURL()); st == 200 {
						t.Errorf("the agent with another service account's token is ready")
					}
				}
			})
		}
	}
}
