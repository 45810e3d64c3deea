package routing

import (
	"fmt"
	"strings"

	"isthmus.dev/tunnel/link"
)

// DefaultMaxPendingPerAgent bounds the dials waiting for one agent's
// answer (--max-pending-dials-per-agent). The agent's own default bound
// (link.DefaultPendingDials, per server) is the same, so the server
// refuses first, with its own reason.
const DefaultMaxPendingPerAgent = 1024

// LimitPending bounds the dials waiting for each agent's answer (over all
// of its links to this server) at max (0 = DefaultMaxPendingPerAgent). An
// agent at its bound is passed over as if it were not connected; a dial
// that finds only such agents is refused with link.ReasonBusy, and onHit
// (if set) hears of it with the agents' ids. Call it before the registry
// is used.
func (r *Registry) LimitPending(max int, onHit func(address string, agents []string)) {
	if max <= 0 {
		max = DefaultMaxPendingPerAgent
	}
	r.pmu.Lock()
	r.maxPending, r.onBusy = max, onHit
	r.pmu.Unlock()
}

// pendingOf is the number of dials waiting for agentID's answer, and
// whether that is the bound.
func (r *Registry) pendingOf(agentID string) (pending int, full bool) {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	n := r.pending[agentID]
	return n, n >= r.maxPendingLocked()
}

func (r *Registry) maxPendingLocked() int {
	if r.maxPending <= 0 {
		return DefaultMaxPendingPerAgent
	}
	return r.maxPending
}

// reserve counts one more dial waiting for agentID, unless it is at the
// bound; release undoes it.
func (r *Registry) reserve(agentID string) (release func(), ok bool) {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if r.pending == nil {
		r.pending = map[string]int{}
	}
	if r.pending[agentID] >= r.maxPendingLocked() {
		return nil, false
	}
	r.pending[agentID]++
	return func() {
		r.pmu.Lock()
		defer r.pmu.Unlock()
		if r.pending[agentID]--; r.pending[agentID] <= 0 {
			delete(r.pending, agentID)
		}
	}, true
}

// Pending is the number of dials waiting for agentID's answer.
func (r *Registry) Pending(agentID string) int {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	return r.pending[agentID]
}

// busy is the refusal of a dial whose every candidate agent is at its bound.
func (r *Registry) busy(address string, agents []string) error {
	r.pmu.Lock()
	max, onHit := r.maxPendingLocked(), r.onBusy
	r.pmu.Unlock()
	if onHit != nil {
		onHit(address, agents)
	}
	return &link.DialError{Address: address, Agent: strings.Join(agents, ","), Reason: link.ReasonBusy,
		Err: fmt.Errorf("%d dials already wait for the answer of every agent that could carry it (proxy-server --max-pending-dials-per-agent)", max)}
}
