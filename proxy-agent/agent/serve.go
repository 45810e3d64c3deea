package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"isthmus.dev/proxy-agent/policy"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
)

// serveLink takes the dial requests of one link until it ends, answering
// each on a goroutine of its own; it returns when every connection it
// started has finished.
func (a *Agent) serveLink(ctx context.Context, h *heldLink) {
	log := a.log.With("server", h.serverID, "link", h.kind)
	var wg sync.WaitGroup
	defer wg.Wait()
	// A link that starts the goroutines itself (the native one) saves
	// each dial a hand-over; it returns once no call is under way, so
	// wg.Add never races the Wait.
	if rs, ok := h.l.(requestServer); ok {
		rs.ServeRequests(ctx, func(r link.Request) {
			wg.Add(1)
			a.serve(r, log, wg.Done)
		})
		return
	}
	for {
		r, err := h.l.Accept(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go a.serve(r, log, wg.Done)
	}
}

// requestServer is a link that runs a handler for each dial request on a
// goroutine of its own (native.AgentLink).
type requestServer interface {
	ServeRequests(ctx context.Context, handle func(link.Request))
}

// busy counts and logs (rate limited) a dial request refused for the
// bound of dials in flight from one server (address "" on the native
// link, where the refusal does not read it).
func (a *Agent) busy(serverID, kind, address string) {
	a.metrics.limits.Hit(limits.AgentPendingDials, "dial refused: --max-pending-dials-per-server dial requests from this proxy-server are in flight already (backends answer slowly, or the server sends more dials than the agent takes)",
		"server", serverID, "link", kind, "address", limits.Clip(address), "max", a.cfg.MaxPendingDials)
}

// dialed is the outcome of a backend dial.
type dialed struct {
	backend net.Conn
	err     error
	took    time.Duration
}

// serve answers one dial request, whichever link it came on: policy, dial,
// answer, splice, metrics. It is the only place the agent does this. done
// is called once the connection has ended.
//
// The dial (name resolution, connect) grows this goroutine's stack, and
// this goroutine ends once the connection is set up. A tunneled connection
// that can tell when it has bytes (the native link over
// --native-mux=isthmus) is spliced with no goroutine while idle. Otherwise
// the copy, which lasts the connection's whole life and mostly waits, runs
// on a goroutine of its own whose stack starts small (an idle connection
// costs mostly its stacks).
func (a *Agent) serve(r link.Request, log *slog.Logger, done func()) {
	c, backend := a.accept(r, log)
	if c == nil {
		done()
		return
	}
	if as, ok := splice.NewAsync(c, backend); ok {
		as.Start(func(res splice.Result) {
			a.finished(res, r, log)
			done()
		})
		return
	}
	go func() {
		a.finished(splice.Splice(c, backend), r, log)
		done()
	}()
}

// accept dials r's backend and accepts r: the tunneled connection and the
// backend's, or nils once r was refused or abandoned.
func (a *Agent) accept(r link.Request, log *slog.Logger) (c, backend net.Conn) {
	address := limits.Clip(r.Address()) // for the logs: it comes from a client of the server
	d := a.dialBackend(r)
	if d.err != nil {
		reason := link.Classify(d.err)
		if errors.Is(d.err, policy.ErrNotAllowed) {
			reason = link.ReasonPolicy
		}
		a.metrics.dialFailed(reason)
		switch reason {
		case link.ReasonCancelled:
			log.Debug("dial cancelled by the server", "address", address, "took", d.took)
		case link.ReasonPolicy:
			log.Warn("dial refused: destination not allowed", "address", address, "allowedDestinations", a.dialer.Policy.String())
		default:
			log.Info("backend dial failed", "address", address, "reason", reason, "err", d.err, "took", d.took)
		}
		r.Refuse(reason, d.err)
		return nil, nil
	}
	c, err := r.Accept(d.backend)
	if err != nil {
		_ = d.backend.Close()
		a.metrics.dialFailed(link.ReasonCancelled)
		log.Debug("dial abandoned: cancelled by the server or the link ended", "address", address, "err", err)
		return nil, nil
	}
	a.metrics.dialed(d.took)
	log.Debug("backend connected", "address", address, "took", d.took)
	return c, d.backend
}

// finished counts and logs a connection that ended. Not inlined: its
// frame would sit beneath the copy's wait.
//
//go:noinline
func (a *Agent) finished(res splice.Result, r link.Request, log *slog.Logger) {
	a.metrics.spliced(res)
	log.Debug("connection finished", "address", limits.Clip(r.Address()), "toBackend", res.AtoB, "fromBackend", res.BtoA, "err", res.Err)
}

// dialBackend dials r's address under the policy, bounded by
// --backend-dial-timeout and cancelled when the server cancels.
func (a *Agent) dialBackend(r link.Request) dialed {
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.DialTimeout)
	defer cancel()
	c, err := a.dialer.DialContext(ctx, r.Address())
	return dialed{backend: c, err: err, took: time.Since(start)}
}
