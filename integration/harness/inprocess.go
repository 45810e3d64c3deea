package harness

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"isthmus.dev/proxy-agent/agent"
)

// StartInProcessAgents runs n agents of the agent package in this process
// against s, all let go at once, each with DefaultConfig pointed at s's
// agent port and CA, id prefix-NNNN, the links alternating native and ANP,
// no health or admin port; configure (if not nil) adjusts agent i's config
// (credentials, say). Their warnings are kept and shown if t fails. stop
// ends them and waits up to a minute; it runs at t's cleanup too.
func StartInProcessAgents(t testing.TB, s *Server, n int, prefix string, configure func(i int, c *agent.Config)) (stop func()) {
	t.Helper()
	logs := &SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Errorf("the in-process agents did not stop within a minute of their context's end")
			}
			if t.Failed() {
				out := logs.String()
				t.Logf("--- warnings of the in-process agents (last 20 kB):\n%s", out[max(0, len(out)-20000):])
			}
		})
	}
	t.Cleanup(stop)
	links := []string{"native", "anp"}
	gate := make(chan struct{})
	for i := range n {
		cfg := agent.DefaultConfig()
		cfg.ProxyServerHosts = []string{"127.0.0.1"}
		cfg.ProxyServerPort = s.AgentPort
		cfg.CACert = s.PKI.CACert
		cfg.AgentID = fmt.Sprintf("%s-%04d", prefix, i)
		cfg.Link = links[i%len(links)]
		cfg.HealthPort, cfg.AdminPort = 0, 0
		if configure != nil {
			configure(i, &cfg)
		}
		a, err := agent.New(cfg, log.With("agent", cfg.AgentID))
		if err != nil {
			stop()
			t.Fatalf("in-process agent %d: %v", i, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			_ = a.Run(ctx)
		}()
	}
	close(gate) // all at once
	return stop
}
