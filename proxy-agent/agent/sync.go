package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// Server count sources (--server-count-source), as ANP names them.
const (
	CountSourceDefault = "default" // leases when counted, else the servers' answers
	CountSourceMax     = "max"     // the larger of the two
)

// syncHost keeps the tunnels of one --proxy-server-host: one server, or,
// when it is the only host given (a load balancer or a name for every
// server), as many distinct servers as they are counted: by their answers
// (serverCount) or by their leases.
func (a *Agent) syncHost(ctx context.Context, host string) {
	log := a.log.With("host", host)
	lb := len(a.cfg.ProxyServerHosts) == 1
	var (
		wg       sync.WaitGroup
		mine     = map[string]bool{} // server ids held through this host
		ended    = make(chan string, 1)
		backoff  = a.cfg.SyncInterval
		reported int // serverCount of the last answer; 0 before the first
	)
	defer wg.Wait()
	for {
		want := 1
		if lb {
			want = a.wanted(reported)
			a.setExpected(want)
		}
		if len(mine) >= want {
			probe, ok := a.waitFull(ctx, ended, mine, lb)
			if !ok {
				return
			}
			if !probe {
				continue // count again: a link ended or the count changed
			}
		}
		drainEnds(ended, mine)
		hl, count, err := a.connect(ctx, host)
		wait := jitter(backoff)
		switch {
		case ctx.Err() != nil:
			if hl != nil {
				hl.close()
			}
			return
		case err != nil:
			a.connectFailed(host, err, wait)
		case !a.hold(hl.held):
			log.Debug("already holding this server; dropping the duplicate connection", "server", hl.held.serverID)
			hl.close()
		default:
			reported = count
			mine[hl.held.serverID] = true
			backoff = a.cfg.SyncInterval
			log.Info("connected to proxy-server", "server", hl.held.serverID, "link", hl.held.kind, "serverCount", count, "holding", len(mine))
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := hl.run(a)
				a.release(hl.held)
				log.Info("tunnel to proxy-server ended", "server", hl.held.serverID, "err", err)
				select {
				case ended <- hl.held.serverID:
				case <-ctx.Done():
				}
			}()
			continue // full: wait above; short: dial again now
		}
		// On failure, or a server already held: jittered, capped
		// exponential backoff, so a dead server or a load balancer that
		// keeps answering with known servers is never hammered.
		backoff = min(2*backoff, a.cfg.SyncIntervalCap)
		if !sleep(ctx, wait) {
			return
		}
	}
}

// waitFull waits while this host's servers are all held: until a link
// ends, the server count changes, or (with --sync-forever behind a load
// balancer) it is time to probe for servers added since. It reports
// whether to probe, and false once ctx ended.
func (a *Agent) waitFull(ctx context.Context, ended chan string, mine map[string]bool, lb bool) (probe, ok bool) {
	var probeC <-chan time.Time
	if a.cfg.SyncForever && lb {
		t := time.NewTimer(a.cfg.SyncIntervalCap)
		defer t.Stop()
		probeC = t.C
	}
	var countChanged <-chan struct{}
	if a.counter != nil && lb {
		countChanged = a.counter.Changed()
	}
	select {
	case <-ctx.Done():
		return false, false
	case id := <-ended:
		delete(mine, id)
		// Not at once: a server that drops links right after accepting
		// them must not be hammered.
		return false, sleep(ctx, jitter(a.cfg.SyncInterval))
	case <-countChanged:
		return false, true
	case <-probeC:
		return true, true
	}
}

// wanted is how many distinct servers a load-balanced host should yield.
func (a *Agent) wanted(reported int) int {
	n := reported
	if a.counter != nil {
		leases := a.counter.Count()
		if a.cfg.ServerCountSource == CountSourceMax {
			n = max(n, leases)
		} else {
			n = leases
		}
	}
	return max(n, 1)
}

// connectFailed logs and counts a failed connect.
func (a *Agent) connectFailed(host string, err error, retryIn time.Duration) {
	var refused *RefusedError
	if errors.As(err, &refused) {
		a.metrics.connectFailures.WithLabelValues("refused").Inc()
		a.log.Error("proxy-server refused this agent; will retry", "host", host, "err", err, "retryIn", retryIn.Round(time.Millisecond))
		return
	}
	a.metrics.connectFailures.WithLabelValues("failed").Inc()
	a.log.Warn("cannot connect to proxy-server; will retry", "host", host, "err", err, "retryIn", retryIn.Round(time.Millisecond))
}

// drainEnds takes the link ends that happened meanwhile.
func drainEnds(ended chan string, mine map[string]bool) {
	for {
		select {
		case id := <-ended:
			delete(mine, id)
		default:
			return
		}
	}
}

// sleep waits d, or less if ctx ends first (then false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// jitter returns a random duration in [d/2, d].
func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }
