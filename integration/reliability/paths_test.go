package reliability

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// Delay and loss of the impaired path: each way.
const (
	pathDelay = 50 * time.Millisecond
	pathLoss  = 0.01
)

// delayLoss: 50 ms each way and 1% loss each way: dials work and
// transfers, several at once, come through byte-exact.
func delayLoss(t *testing.T, w *row, o opts, link, frontend string) {
	conns, size := 4, int64(1<<20)
	if o.long {
		conns, size = 8, 4<<20
	}
	w.r.Checked = fmt.Sprintf("delay %v and loss %v%% each way: 10 dials, then %d echoes of %d MiB at once, byte-exact",
		pathDelay, pathLoss*100, conns, size>>20)
	n := harness.NewImpairedNet(t, pathDelay, pathLoss)
	r := newRig(t, n, link, frontend)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var dials []time.Duration
	for i := range 10 {
		start := time.Now()
		if err := dialEcho(ctx, r.server, r.target, uint64(i), 1024); err != nil {
			w.check(false, "dial %d through the impaired path failed: %v", i, err)
			return
		}
		dials = append(dials, time.Since(start))
	}
	start := time.Now()
	errs := parallel(conns, conns, func(i int) error {
		c, err := r.server.Dial(ctx, r.target)
		if err != nil {
			return fmt.Errorf("dial: %w", err)
		}
		defer c.Close()
		if got := echo(ctx, c, harness.NewPattern(uint64(100+i)), size, 32<<10); got.Err != nil || got.N != size {
			return fmt.Errorf("echo %d: %v", i, got)
		}
		return nil
	})
	took := time.Since(start)
	w.check(len(errs) == 0, "%d of %d transfers failed: %v", len(errs), conns, errors.Join(errs...))
	w.figure("%s", impairedBy(n))
	w.figure("dial+1KiB echo p50 %v", p50(dials).Round(time.Millisecond))
	w.figure("%d MiB echoed in %.1fs (%.2f MB/s)", int64(conns)*size>>20, took.Seconds(), float64(2*int64(conns)*size)/took.Seconds()/1e6)
	if n.Line != nil {
		passed, dropped := n.Line.Stats()
		w.figure("%d packets passed, %d dropped (%.2f%%)", passed, dropped, 100*float64(dropped)/float64(passed+dropped))
	}
}

// impairedBy is the short form of how n delays and drops.
func impairedBy(n *harness.FaultNet) string {
	if strings.HasPrefix(n.Impairment, "tc netem") {
		return "tc netem"
	}
	return "TUN delay line (no netem in this kernel)"
}

// linkDown: the namespace's end of the veth goes down and up: for 5 s
// while a transfer runs (it resumes and completes byte-exact, the tunnel
// is kept), then until both ends dropped the tunnel (open connections
// end, the agent reconnects once it is up).
func linkDown(t *testing.T, w *row, link, frontend string) {
	w.r.Checked = "veth down 5 s during a transfer (it completes byte-exact, the tunnel is kept); " +
		"then down until both ends notice (open connections end, the agent reconnects when it is up), new dials work, no leak"
	n := harness.NewFaultNet(t)
	r := newRig(t, n, link, frontend)
	u := startWatch(t, r.procs()...)
	blip(t, w, r, 5*time.Second)
	hs := openAcross(t, r)
	e := newTimeline()
	n.SetLink(t, false)
	ends := map[string]ended{}
	sBound, aBound := noticeBounds(link)
	downFor := max(sBound, aBound) + slack
	observe(r, e, hs, ends, func() bool { return false }, e.t0.Add(downFor), func() bool {
		_, s := e.seen("server noticed")
		_, a := e.seen("agent noticed")
		return s && a && len(ends) == len(hs)
	})
	n.SetLink(t, true)
	backAt := e.since()
	reconnectBound := 15 * time.Second
	observe(r, e, hs, ends, func() bool { return true }, time.Now().Add(reconnectBound+slack), func() bool {
		_, ok := e.seen("reconnected")
		return ok
	})
	w.figure("down %.1fs", backAt.Seconds())
	checkNoticed(w, e, link, ends, backAt, reconnectBound)
	afterFault(t, w, r, u)
}

// blip takes the link down for d while an echo runs at a steady pace,
// and checks the echo completes byte-exact over the same tunnel.
func blip(t *testing.T, w *row, r *rig, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := r.server.Dial(ctx, r.target)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	done := make(chan error, 1)
	const chunks, chunk = 100, 32 << 10
	go func() {
		p := harness.NewPattern(21)
		for i := range chunks {
			if got := echo(ctx, c, p, chunk, chunk); got.Err != nil {
				done <- fmt.Errorf("chunk %d: %w", i, got.Err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		done <- nil
	}()
	time.Sleep(time.Second)
	r.net.SetLink(t, false)
	var minLinks float64 = 1
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		minLinks = min(minLinks, serverLinks(r.server))
	}
	r.net.SetLink(t, true)
	err = <-done
	w.check(err == nil, "a transfer across a %v link-down failed: %v", d, err)
	w.check(minLinks == 1 && r.agentLinks() == 1, "the tunnel was dropped during a %v link-down (server links down to %v)", d, minLinks)
	if err == nil {
		w.figure("%d KiB echoed across a %v link-down, tunnel kept", chunks*chunk>>10, d)
	}
}

// moveServer: the agent is given two addresses; the server's address
// goes away and the server comes back on the other (same server id).
func moveServer(t *testing.T, w *row, link, frontend string) {
	w.r.Checked = "agent given 2 hosts; the server's address disappears and the server (same id) appears on the other: " +
		"the agent drops the dead tunnel and holds the server at its new address within its keepalive bound, dials through it work, " +
		"the old process drops the link"
	n := harness.NewFaultNet(t)
	oldAddr, newAddr := n.AddHostAddr(t), n.AddHostAddr(t)
	n.RouteHostAddr(t, oldAddr)
	r := newRigParts(t, n, link, oldAddr.String(), newAddr.String())
	const id = "server-moving"
	r.server = r.startServer(t, frontend, oldAddr.String(), 0, id)
	old := r.server
	r.agent = r.startAgent(t, oldAddr.String()+","+newAddr.String())
	old.WaitReady(t)
	if err := dialEcho(context.Background(), old, r.target, 1, 1024); err != nil {
		w.check(false, "a dial through the server at its first address failed: %v", err)
	}

	e := newTimeline()
	n.RemoveHostAddr(t, oldAddr)
	n.RouteHostAddr(t, newAddr)
	r.server = r.startServer(t, frontend, newAddr.String(), old.AgentPort, id)
	_, aBound := noticeBounds(link)
	// Until the agent notices its tunnel to the old address is gone, the
	// server at the new one is a second path to a server it holds: it
	// drops those connections as duplicates. Moved is the old tunnel
	// ended and the agent's one tunnel held by the server at the new
	// address.
	var moved bool
	for deadline := e.t0.Add(aBound + 2*slack); time.Now().Before(deadline) && !moved; time.Sleep(100 * time.Millisecond) {
		_, _, oldEnded := loggedAfter(r.agent.Output(), "tunnel to proxy-server ended", e.t0)
		moved = oldEnded && serverLinks(r.server) == 1 && r.agentLinks() == 1
	}
	d := e.since()
	if w.check(moved, "the agent did not reach the server at its new address within %v", aBound+2*slack) {
		w.figure("agent held the server at its new address %.1fs after the move (bound %v)", d.Seconds(), aBound+2*slack)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := dialEcho(ctx, r.server, r.target, 2, 64<<10); err != nil {
		w.check(false, "a dial through the server at its new address failed: %v", err)
	}
	sBound, _ := noticeBounds(link)
	harness.WaitFor(t, sBound+slack, "the server left at the old address to drop the agent", func() bool { return serverLinks(old) == 0 })
	w.figure("the old server dropped the link %.1fs after the move", e.since().Seconds())
}
