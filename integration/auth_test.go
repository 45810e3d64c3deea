package integration

import (
	"strings"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// A proxy-server with neither client certificates nor token authentication
// would take any TLS client as an agent and route kube-apiserver's traffic
// to it: it refuses to start and names the flags to add. With the explicit
// opt-out it starts, and an agent without credentials carries traffic.
func TestServerWithoutAgentAuthentication(t *testing.T) {
	harness.LeakCheck(t)
	pki := harness.NewPKI(t)

	s := harness.NewServer(t, bins, pki, harness.ServerOpts{Auth: harness.ServerAuth{NoClientCerts: true}})
	p := harness.Start(t, "isthmus-server-no-auth", s.Bin(), s.Args()...)
	err := p.Wait(30 * time.Second)
	if err == nil {
		t.Fatalf("proxy-server with no agent authentication exited 0; want a refusal:\n%s", p.Output())
	}
	if strings.Contains(err.Error(), "still running") {
		t.Fatalf("proxy-server with no agent authentication is running; want it to refuse to start:\n%s", p.Output())
	}
	for _, flag := range []string{"--cluster-ca-cert", "--agent-namespace", "--allow-unauthenticated-agents"} {
		if !strings.Contains(p.Output(), flag) {
			t.Errorf("the refusal does not name %s; it said:\n%s", flag, p.Output())
		}
	}

	open := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: harness.HTTPConnect, Auth: harness.Unauthenticated})
	harness.StartAgent(t, bins, open, harness.AgentOpts{Auth: harness.AgentAuth{NoClientCert: true}})
	open.WaitReady(t)
	backend := harness.StartBackend(t, harness.Echo)
	open.DialEcho(t, backend.Addr(), "anonymous agents, as asked")
}
