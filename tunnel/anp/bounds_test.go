package anp

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"isthmus.dev/tunnel/link"
)

// A server cannot make the agent hold more dials than PendingDials, counted
// from the DIAL_REQ to the answer (queued or dialing): the excess is
// refused at once with the agent's reason, the dials in flight go through,
// and room comes back as they are answered.
func TestAgentRefusesDialsBeyondItsBound(t *testing.T) {
	echo, _ := echoServer(t)
	gate := make(chan struct{})
	var started atomic.Int64
	var mu sync.Mutex
	var busy []string
	dial := func(ctx context.Context, address string) (net.Conn, error) {
		started.Add(1)
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return loopbackDial(ctx, address)
	}
	ao := AgentOptions{PendingDials: 3, OnBusy: func(address string) { mu.Lock(); busy = append(busy, address); mu.Unlock() }}
	p := newPair(t, ServerOptions{}, ao, dial)

	type result struct {
		c   net.Conn
		err error
	}
	held := make(chan result, 3)
	for range 3 {
		go func() { c, err := p.server.Dial(dialCtx(t), echo); held <- result{c, err} }()
	}
	waitFor(t, "3 dials taken by the agent", func() bool { return started.Load() == 3 })
	for range 5 {
		_, err := p.server.Dial(dialCtx(t), echo)
		if err == nil || !strings.Contains(err.Error(), link.ErrAgentBusy.Error()) || !strings.Contains(err.Error(), "3 dial requests") {
			t.Fatalf("dial beyond the bound: %v, want the agent's busy refusal naming its bound", err)
		}
	}
	mu.Lock()
	if len(busy) != 5 || busy[0] != echo {
		t.Errorf("OnBusy saw %q, want the address 5 times", busy)
	}
	mu.Unlock()
	close(gate)
	for range 3 {
		r := <-held
		if r.err != nil {
			t.Fatalf("a dial within the bound failed: %v", r.err)
		}
		r.c.Close()
	}
	for range 4 {
		c, err := p.server.Dial(dialCtx(t), echo)
		if err != nil {
			t.Fatalf("dial after the held ones were answered: %v", err)
		}
		c.Close()
	}
}
