package kubeapi

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
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

	startInProcessAgents(t, s, file.Path)
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

// startInProcessAgents runs massAgents agents of the agent package in this
// process, all let go at once, alternating the links; they stop at t's
// cleanup, which waits for them.
func startInProcessAgents(t *testing.T, s *harness.Server, tokenPath string) {
	t.Helper()
	logs := &harness.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Errorf("the in-process agents did not stop within a minute of their context's end")
		}
		if t.Failed() {
			t.Logf("--- warnings of the in-process agents:\n%s", logs.String())
		}
	})
	gate := make(chan struct{})
	for i := range massAgents {
		cfg := agent.DefaultConfig()
		cfg.ProxyServerHosts = []string{"127.0.0.1"}
		cfg.ProxyServerPort = s.AgentPort
		cfg.CACert = s.PKI.CACert
		cfg.TokenPath = tokenPath
		cfg.AgentID = fmt.Sprintf("mass-%03d", i)
		cfg.Link = links[i%len(links)]
		cfg.HealthPort, cfg.AdminPort = 0, 0
		a, err := agent.New(cfg, log.With("agent", cfg.AgentID))
		if err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			_ = a.Run(ctx)
		}()
	}
	close(gate) // all at once
}
