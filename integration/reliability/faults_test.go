package reliability

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	pagent "isthmus.dev/proxy-agent/agent"
	pserver "isthmus.dev/proxy-server/server"
	"isthmus.dev/tunnel/native"

	"isthmus.dev/integration/harness"
)

// holeFor is how long the link is black-holed: the 30 s.
const holeFor = 30 * time.Second

// grpcKeepaliveTimeout is how long gRPC waits for a keepalive ping's
// answer when the daemons leave it unset (grpc-go's default).
const grpcKeepaliveTimeout = 20 * time.Second

// slack is added to every bound the daemons' settings give: the test
// polls, and the race-enabled daemons share two cores with it.
const slack = 5 * time.Second

// noticeBounds are how long the server and the agent take at most, with
// their default settings, to notice that link's path is gone: a ping
// interval plus the wait for its answer.
func noticeBounds(link string) (server, agent time.Duration) {
	if strings.HasPrefix(link, "native") {
		b := native.DefaultKeepAlive + native.DefaultWriteTimeout
		return b, b
	}
	return pserver.DefaultConfig().KeepaliveTime + grpcKeepaliveTimeout,
		pagent.DefaultConfig().KeepaliveTime + grpcKeepaliveTimeout
}

// timeline records when things first happened after a fault began.
type timeline struct {
	t0  time.Time
	mu  sync.Mutex
	at  map[string]time.Duration
	why map[string]string
}

func newTimeline() *timeline {
	return &timeline{t0: time.Now(), at: map[string]time.Duration{}, why: map[string]string{}}
}

// note keeps why name happened (the first reason given).
func (e *timeline) note(name, why string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.why[name]; !ok {
		e.why[name] = why
	}
}

func (e *timeline) reason(name string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.why[name]
}

// mark records name now, unless it was recorded before.
func (e *timeline) mark(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.at[name]; !ok {
		e.at[name] = time.Since(e.t0)
	}
}

// markAt records name at time at, unless it was recorded before.
func (e *timeline) markAt(name string, at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.at[name]; !ok {
		e.at[name] = at.Sub(e.t0)
	}
}

func (e *timeline) seen(name string) (time.Duration, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, ok := e.at[name]
	return d, ok
}

func (e *timeline) since() time.Duration { return time.Since(e.t0) }

// openAcross opens the connections a fault finds open: two idle ones and
// a busy one (an echo running), each checked once first.
func openAcross(t *testing.T, r *rig) []*held {
	t.Helper()
	var hs []*held
	for i, name := range []string{"idle-1", "idle-2", "busy"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		c, err := r.server.Dial(ctx, r.target)
		cancel()
		if err != nil {
			t.Fatalf("%s: dial through the tunnel: %v", name, err)
		}
		t.Cleanup(func() { c.Close() })
		harness.CheckEcho(t, c, fmt.Sprintf("before the fault %d", i))
		if name == "busy" {
			hs = append(hs, holdBusy(name, c))
		} else {
			hs = append(hs, holdIdle(name, c))
		}
	}
	harness.WaitFor(t, 10*time.Second, "the backend to hold the 3 connections", func() bool { return r.backend.Open() == 3 })
	return hs
}

// observe polls, every 100 ms until until() or the deadline, what the
// server, the agent, the backend and the held connections show, marking
// on e: "server noticed", "agent noticed", "backend closed", "<conn>
// ended", and, once both noticed and the path is back (back()),
// "reconnected".
func observe(r *rig, e *timeline, hs []*held, ends map[string]ended, back func() bool, deadline time.Time, until func() bool) {
	for time.Now().Before(deadline) && !until() {
		// The logs, not the gauges: the agent may be back before the
		// server dropped the old link, or gone and back between two polls.
		if at, why, ok := loggedAfter(r.server.Output(), "agent link ended", e.t0); ok {
			e.markAt("server noticed", at)
			e.note("server noticed", why)
		}
		if at, why, ok := loggedAfter(r.agent.Output(), "tunnel to proxy-server ended", e.t0); ok {
			e.markAt("agent noticed", at)
			e.note("agent noticed", why)
		}
		if r.backend.Open() == 0 {
			e.mark("backend closed")
		}
		for _, h := range hs {
			select {
			case x := <-h.out:
				ends[h.name] = x
				e.markAt(h.name+" ended", x.at)
			default:
			}
		}
		_, s := e.seen("server noticed")
		_, a := e.seen("agent noticed")
		if s && a && back() && serverLinks(r.server) == 1 && r.agentLinks() == 1 {
			e.mark("reconnected")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkNoticed checks what a fault that cut the path must have caused:
// both ends noticed within their bounds, every open connection ended
// with an error or EOF (none hangs), the agent closed its backend
// connections, and it reconnected once the path came back.
func checkNoticed(w *row, e *timeline, link string, ends map[string]ended, backAt time.Duration, reconnectBound time.Duration) {
	sBound, aBound := noticeBounds(link)
	for _, who := range []struct {
		what  string
		bound time.Duration
	}{{"server noticed", sBound}, {"agent noticed", aBound}, {"backend closed", aBound}} {
		d, ok := e.seen(who.what)
		if w.check(ok && d <= who.bound+slack, "%s: %v (bound %v + %v; seen %v)", who.what, d.Round(100*time.Millisecond), who.bound, slack, ok) {
			if why := e.reason(who.what); why != "" {
				w.figure("%s %.1fs (bound %v): %s", who.what, d.Seconds(), who.bound, why)
			} else {
				w.figure("%s %.1fs (bound %v)", who.what, d.Seconds(), who.bound)
			}
		}
	}
	for _, name := range []string{"idle-1", "idle-2", "busy"} {
		x, ok := ends[name]
		d, _ := e.seen(name + " ended")
		if w.check(ok && d <= max(sBound, aBound)+slack, "open connection %s: ended %v after %v (bound %v)", name, ok, d.Round(100*time.Millisecond), max(sBound, aBound)+slack) {
			w.figure("%s ended %.1fs: %v", name, d.Seconds(), x.err)
		}
	}
	d, ok := e.seen("reconnected")
	if w.check(ok && d-backAt <= reconnectBound, "agent reconnected: %v, %v after the path came back (bound %v)", ok, (d - backAt).Round(100*time.Millisecond), reconnectBound) {
		w.figure("reconnected %.1fs after the path came back", (d - backAt).Seconds())
	}
}

// afterFault checks the tunnel serves new dials, and that the server and
// the agent are back near their baseline.
func afterFault(t *testing.T, w *row, r *rig, u *watch) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := dialEcho(ctx, r.server, r.target, 11, 64<<10); err != nil {
		w.check(false, "a new dial after the fault failed: %v", err)
	}
	harness.WaitFor(t, 30*time.Second, "the backend's connections to close", func() bool { return r.backend.Open() == 0 })
	u.finish(t, w)
}

// blackhole: the pair drops every packet both ways for 30 s.
func blackhole(t *testing.T, w *row, link, frontend string) {
	w.r.Checked = "link black-holed 30 s, and on until both ends noticed (nft drop both ways, no RST): server and agent notice within keepalive bounds, " +
		"open connections end (none hangs), agent reconnects when the path returns, new dials work, no leak"
	n := harness.NewFaultNet(t)
	r := newRig(t, n, link, frontend)
	u := startWatch(t, r.procs()...)
	hs := openAcross(t, r)
	time.Sleep(500 * time.Millisecond) // the busy connection runs
	e := newTimeline()
	n.Blackhole(t, true)
	ends := map[string]ended{}
	sBound, aBound := noticeBounds(link)
	observe(r, e, hs, ends, func() bool { return false }, e.t0.Add(holeFor), func() bool { return false })
	// The hole stays past 30 s until both ends noticed and every open
	// connection ended (or their bounds passed): what they notice, they
	// notice of the hole, not of the path's return.
	observe(r, e, hs, ends, func() bool { return false }, e.t0.Add(max(sBound, aBound)+slack), func() bool {
		_, s := e.seen("server noticed")
		_, a := e.seen("agent noticed")
		return s && a && len(ends) == len(hs)
	})
	n.Blackhole(t, false)
	backAt := e.since()
	w.figure("hole %.1fs", backAt.Seconds())
	reconnectBound := 45 * time.Second
	deadline := e.t0.Add(max(max(sBound, aBound)+slack, backAt+reconnectBound))
	observe(r, e, hs, ends, func() bool { return true }, deadline, func() bool {
		_, ok := e.seen("reconnected")
		return ok && len(ends) == len(hs)
	})
	checkNoticed(w, e, link, ends, backAt, reconnectBound)
	afterFault(t, w, r, u)
}
