package routing

import (
	"errors"
	"testing"

	"isthmus.dev/tunnel/ident"
	"isthmus.dev/tunnel/link"
)

func agent(t *testing.T, name, idents string) *Backend {
	t.Helper()
	id, err := ident.Parse(idents)
	if err != nil {
		t.Fatal(err)
	}
	return &Backend{AgentID: name, Ident: id}
}

func TestStrategyMatching(t *testing.T) {
	node1 := agent(t, "node1", "host=node1&ipv4=10.0.0.1")
	pods := agent(t, "pods", "cidr=10.244.0.0/16")
	gw := agent(t, "gw", "default-route=true")
	all := []*Backend{node1, pods, gw}
	for _, tc := range []struct {
		strategy, host string
		want           []*Backend
	}{
		{Default, "anything", all},
		{DestHost, "node1", []*Backend{node1}},
		{DestHost, "10.0.0.1", []*Backend{node1}},
		{DestHost, "10.0.0.2", nil},
		{CIDR, "10.244.3.4", []*Backend{pods}},
		{CIDR, "node1", nil},
		{DefaultRoute, "192.0.2.1", []*Backend{gw}},
	} {
		var got []*Backend
		for _, b := range all {
			if matches(tc.strategy, b, tc.host) {
				got = append(got, b)
			}
		}
		if len(got) != len(tc.want) || (len(got) > 0 && got[0] != tc.want[0]) {
			t.Errorf("%s %s: matched %d agents, want %d", tc.strategy, tc.host, len(got), len(tc.want))
		}
	}
}

func TestChoosePrefersIdleThenNonDraining(t *testing.T) {
	busy, idle, draining := &Backend{AgentID: "busy"}, &Backend{AgentID: "idle"}, &Backend{AgentID: "draining"}
	cands := []candidate{{busy, 10, false}, {draining, 0, true}, {idle, 1, false}}
	for range 20 {
		if b := choose(cands); b != idle {
			t.Fatalf("chose %s, want the least loaded non-draining agent", b.AgentID)
		}
	}
	if b := choose([]candidate{{draining, 0, true}}); b != draining {
		t.Fatalf("a draining agent is still a fallback; got %v", b)
	}
	if choose(nil) != nil {
		t.Fatal("no candidates must choose nothing")
	}
	// Equals are spread: both get picked over many tries.
	a, b := &Backend{AgentID: "a"}, &Backend{AgentID: "b"}
	seen := map[*Backend]bool{}
	for range 200 {
		seen[choose([]candidate{{a, 2, false}, {b, 2, false}})] = true
	}
	if !seen[a] || !seen[b] {
		t.Fatal("equal candidates were not spread")
	}
}

func TestEmptyRegistryHasNoAgent(t *testing.T) {
	r := NewRegistry([]string{Default}, nil)
	if _, err := r.Pick("x:1", nil); !errors.Is(err, link.ErrNoAgent) {
		t.Fatalf("%v, want ErrNoAgent", err)
	}
}

func TestParseStrategies(t *testing.T) {
	if s, err := ParseStrategies("destHost, default"); err != nil || len(s) != 2 {
		t.Errorf("%v %v", s, err)
	}
	for _, bad := range []string{"", "nope", "default,default"} {
		if _, err := ParseStrategies(bad); err == nil {
			t.Errorf("ParseStrategies(%q) accepted", bad)
		}
	}
}

func TestServingCountsDistinctAgentsPerStrategy(t *testing.T) {
	r := NewRegistry([]string{DestHost, Default}, nil)
	node1 := agent(t, "node1", "host=node1&ipv4=10.0.0.1")
	node1again := agent(t, "node1", "host=node1") // a second link of the same agent
	pods := agent(t, "pods", "cidr=10.244.0.0/16")
	gw := agent(t, "gw", "default-route=true")
	for _, b := range []*Backend{node1, node1again, pods, gw} {
		r.Add(b)
	}
	for strategy, want := range map[string]int{Default: 3, DestHost: 1, CIDR: 1, DefaultRoute: 1, "nope": 0} {
		if got := r.Serving(strategy); got != want {
			t.Errorf("Serving(%s) = %d, want %d", strategy, got, want)
		}
	}
	r.Remove(node1)
	if got := r.Serving(DestHost); got != 1 {
		t.Errorf("with one of node1's links left, Serving(destHost) = %d, want 1", got)
	}
	r.Remove(node1again)
	if got := r.Serving(DestHost); got != 0 {
		t.Errorf("without node1, Serving(destHost) = %d, want 0", got)
	}
}
