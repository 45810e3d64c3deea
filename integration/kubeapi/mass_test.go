package kubeapi

import (
	"testing"
	"time"

	"isthmus.dev/integration/harness"
	"isthmus.dev/proxy-agent/agent"
)

const massAgents = 200

// TestTokenReviewsCoalesced: 200 agents with one token connect at once, as
// a DaemonSet does after a control-plane restart. The server asks
// kube-apiserver about the token a few times at most and answers the rest
// from its cache or from a review already in flight. The agents are the
// real agent package run in this process (200 processes are too heavy for
// the test machine), half on each link.
func TestTokenReviewsCoalesced(t *testing.T) {
	t.Parallel()
	e := newTokenEnv(t, "mass")
	file := harness.NewTokenFile(t, e.token(t))
	s := harness.StartServer(t, bins, harness.NewPKI(t), harness.ServerOpts{Mode: harness.GRPC, Auth: e.auth})

	harness.StartInProcessAgents(t, s, massAgents, "mass", func(_ int, c *agent.Config) { c.TokenPath = file.Path })
	harness.WaitMetric(t, 3*time.Minute, s.MetricsURL(), "konnectivity_network_proxy_server_agent_links", massAgents)

	sum := func(labels ...string) float64 {
		n, err := harness.MetricSum(s.MetricsURL(), mTokenReviews, labels...)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	api, cache, coalesced := sum("source", "api"), sum("source", "cache"), sum("source", "coalesced")
	t.Logf("%d agents: %v TokenReviews sent to kube-apiserver, %v answered from the cache, %v joined a review in flight",
		massAgents, api, cache, coalesced)
	if api < 1 || api > 3 {
		t.Errorf("%d agents with one token caused %v TokenReviews; want 1 to 3", massAgents, api)
	}
	if allowed := sum("result", "allowed"); allowed < massAgents {
		t.Errorf("%s{result=allowed} is %v for %d accepted agents", mTokenReviews, allowed, massAgents)
	}
	if refused := sum("result", "refused") + sum("result", "error"); refused != 0 {
		t.Errorf("%v token checks refused or failed; the token is valid", refused)
	}
}
