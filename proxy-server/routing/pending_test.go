package routing

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
	"isthmus.dev/tunnel/native"
)

// nativeAgent connects a real native link over an in-memory pipe; the
// agent answers every dial with dial. Both ends stop at cleanup.
func nativeAgent(t *testing.T, id string, dial link.DialFunc) *Backend {
	t.Helper()
	sc, ac := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	accepted := make(chan *native.ServerLink, 1)
	go func() {
		l, err := native.Accept(ctx, sc, native.ServerOptions{ServerID: "s", ServerCount: 1})
		if err != nil {
			t.Error(err)
		}
		accepted <- l
	}()
	al, _, err := native.Connect(ctx, ac, native.Hello{AgentID: id}, native.AgentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sl := <-accepted
	if sl == nil {
		t.FailNow()
	}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = sl.Run(ctx) }()
	go func() { defer wg.Done(); _ = al.Run(ctx) }()
	go func() { defer wg.Done(); linktest.Serve(ctx, al, dial) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &Backend{AgentID: id, Kind: "native", Link: sl}
}

// gated dials a real in-memory connection once gate is closed.
func gated(gate <-chan struct{}, started *atomic.Int64) link.DialFunc {
	return func(ctx context.Context, _ string) (net.Conn, error) {
		started.Add(1)
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		c, peer := net.Pipe()
		go func() { <-ctx.Done(); peer.Close() }()
		return c, nil
	}
}

// Each agent takes at most the bound of dials waiting for its answer; a
// dial goes to an agent with room, and when none has room it is refused at
// once as busy, naming the agents, and counted. Room comes back as the
// dials are answered.
func TestPendingDialsPerAgent(t *testing.T) {
	gate := make(chan struct{})
	var started atomic.Int64
	r := NewRegistry([]string{Default}, nil)
	var hits atomic.Int64
	var lastAgents []string
	var mu sync.Mutex
	r.LimitPending(2, func(_ string, agents []string) {
		hits.Add(1)
		mu.Lock()
		lastAgents = agents
		mu.Unlock()
	})
	a, b := nativeAgent(t, "a", gated(gate, &started)), nativeAgent(t, "b", gated(gate, &started))
	r.Add(a)
	r.Add(b)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type result struct {
		c   net.Conn
		err error
	}
	held := make(chan result, 4)
	for range 4 {
		go func() { c, err := r.Dial(ctx, "10.0.0.1:443"); held <- result{c, err} }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for started.Load() != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("%d dials reached the agents, want 4 (2 each)", started.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if r.Pending("a") != 2 || r.Pending("b") != 2 {
		t.Fatalf("pending a=%d b=%d, want 2 each: a dial goes where there is room", r.Pending("a"), r.Pending("b"))
	}
	_, err := r.Dial(ctx, "10.0.0.1:443")
	var de *link.DialError
	if !errors.As(err, &de) || de.Reason != link.ReasonBusy || !strings.Contains(err.Error(), "--max-pending-dials-per-agent") {
		t.Fatalf("dial with every agent at its bound: %v, want busy naming the flag", err)
	}
	mu.Lock()
	slices.Sort(lastAgents)
	if hits.Load() != 1 || !slices.Equal(lastAgents, []string{"a", "b"}) {
		t.Errorf("onHit: %d calls, agents %v; want 1 naming a and b", hits.Load(), lastAgents)
	}
	mu.Unlock()
	close(gate)
	for range 4 {
		res := <-held
		if res.err != nil {
			t.Fatalf("a dial within the bound failed: %v", res.err)
		}
		res.c.Close()
	}
	if r.Pending("a") != 0 || r.Pending("b") != 0 {
		t.Fatalf("pending a=%d b=%d after the answers, want 0", r.Pending("a"), r.Pending("b"))
	}
	c, err := r.Dial(ctx, "10.0.0.1:443")
	if err != nil {
		t.Fatalf("dial once room came back: %v", err)
	}
	c.Close()
}

// An agent at its bound is passed over like one not connected: a later
// strategy (here default after destHost) carries the dial.
func TestFullAgentFallsThroughToTheNextStrategy(t *testing.T) {
	gate := make(chan struct{})
	var started atomic.Int64
	r := NewRegistry([]string{DestHost, Default}, nil)
	r.LimitPending(1, nil)
	node := nativeAgent(t, "node1", gated(gate, &started))
	node.Ident.Hosts = []string{"node1"}
	other := nativeAgent(t, "other", gated(gate, &started))
	r.Add(node)
	r.Add(other)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	defer func() { close(gate); <-done }()
	go func() {
		defer close(done)
		if c, err := r.Dial(ctx, "node1:10250"); err == nil {
			c.Close()
		}
	}()
	for r.Pending("node1") != 1 {
		if ctx.Err() != nil {
			t.Fatal("the first dial never reached node1")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b, err := r.Pick("node1:10250", nil)
	if err != nil || b != other {
		t.Fatalf("Pick with node1 at its bound: %v, %v; want the default strategy's agent", b, err)
	}
}
