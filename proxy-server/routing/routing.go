// Package routing chooses the agent that carries a dial: a registry of
// connected agents and the proxy strategies (default, destHost,
// defaultRoute, cidr), picking the least-loaded candidate.
package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"

	"isthmus.dev/tunnel/ident"
	"isthmus.dev/tunnel/link"
)

// Link is an agent link as the router sees it.
type Link interface {
	link.Dialer
	Draining() bool
	Active() int
}

// Backend is one connected agent link.
type Backend struct {
	AgentID string
	Kind    string // "native" or "anp": which link carries it
	Ident   ident.Identifiers
	Link    Link
}

// Strategy names, as ANP's --proxy-strategies spells them.
const (
	Default      = "default"
	DestHost     = "destHost"
	DefaultRoute = "defaultRoute"
	CIDR         = "cidr"
)

// ParseStrategies parses a comma-separated --proxy-strategies value.
func ParseStrategies(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		switch f {
		case Default, DestHost, DefaultRoute, CIDR:
		default:
			return nil, fmt.Errorf("unknown proxy strategy %q: allowed are %s, %s, %s, %s", f, Default, DestHost, DefaultRoute, CIDR)
		}
		if slices.Contains(out, f) {
			return nil, fmt.Errorf("proxy strategy %q listed twice", f)
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, errors.New("no proxy strategy given: allowed are default, destHost, defaultRoute, cidr")
	}
	return out, nil
}

// Registry holds the connected agents. It is safe for concurrent use.
type Registry struct {
	strategies []string
	log        *slog.Logger

	mu       sync.RWMutex
	backends []*Backend
	changed  chan struct{} // closed and replaced on every change

	pmu        sync.Mutex     // after mu, never before
	pending    map[string]int // dials waiting for an answer, by agent id
	maxPending int            // bound of pending per agent (LimitPending)
	onBusy     func(address string, agents []string)
}

// NewRegistry returns a registry that routes by strategies, in order.
func NewRegistry(strategies []string, log *slog.Logger) *Registry {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Registry{strategies: strategies, log: log, changed: make(chan struct{})}
}

// Add registers a connected agent link.
func (r *Registry) Add(b *Backend) {
	r.mu.Lock()
	r.backends = append(r.backends, b)
	n := len(r.backends)
	r.notifyLocked()
	r.mu.Unlock()
	r.log.Info("agent connected", "agent", b.AgentID, "link", b.Kind, "identifiers", b.Ident.String(), "agents", n)
}

// Remove forgets a link.
func (r *Registry) Remove(b *Backend) {
	r.mu.Lock()
	r.backends = slices.DeleteFunc(r.backends, func(x *Backend) bool { return x == b })
	n := len(r.backends)
	r.notifyLocked()
	r.mu.Unlock()
	r.log.Info("agent disconnected", "agent", b.AgentID, "agents", n)
}

func (r *Registry) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Len is the number of connected agent links.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.backends)
}

// Changed returns a channel closed at the next Add or Remove.
func (r *Registry) Changed() <-chan struct{} {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.changed
}

// Agents lists the connected agent ids.
func (r *Registry) Agents() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.backends))
	for _, b := range r.backends {
		out = append(out, b.AgentID)
	}
	return out
}

// Serving counts the distinct agents strategy can choose among now (the
// value of ANP's ready_backends{proxy_strategy}).
func (r *Registry) Serving(strategy string) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := make(map[string]struct{}, len(r.backends))
	for _, b := range r.backends {
		if canServe(strategy, b) {
			ids[b.AgentID] = struct{}{}
		}
	}
	return len(ids)
}

// canServe reports whether strategy can pick b for some destination.
func canServe(strategy string, b *Backend) bool {
	switch strategy {
	case Default:
		return true
	case DestHost:
		return len(b.Ident.Hosts)+len(b.Ident.IPv4)+len(b.Ident.IPv6) > 0
	case DefaultRoute:
		return b.Ident.DefaultRoute
	case CIDR:
		return len(b.Ident.CIDRs) > 0
	}
	return false
}

// Pick chooses the backend for address ("host:port"), skipping those in
// exclude and agents at their bound of pending dials (LimitPending). The
// first strategy with a candidate wins; among its candidates non-draining
// ones come first, then the least loaded (connections and pending dials). When no agent is left but some
// were passed over for their bound, the error is link.ReasonBusy's.
func (r *Registry) Pick(address string, exclude []*Backend) (*Backend, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	r.mu.RLock()
	var cands []candidate
	var full []string
	for _, s := range r.strategies {
		cands = cands[:0]
		for _, b := range r.backends {
			if slices.Contains(exclude, b) || !matches(s, b, host) {
				continue
			}
			pending, isFull := r.pendingOf(b.AgentID)
			if isFull {
				if !slices.Contains(full, b.AgentID) {
					full = append(full, b.AgentID)
				}
				continue
			}
			cands = append(cands, candidate{b, b.Link.Active() + pending, b.Link.Draining()})
		}
		if best := choose(cands); best != nil {
			r.mu.RUnlock()
			return best, nil
		}
	}
	r.mu.RUnlock()
	if len(full) > 0 {
		return nil, r.busy(address, full)
	}
	return nil, link.ErrNoAgent
}

// candidate is a backend with its load and drain state at pick time.
type candidate struct {
	b     *Backend
	load  int
	drain bool
}

// choose prefers non-draining candidates, then the least loaded, and
// spreads evenly among equals. It returns nil for no candidates.
func choose(cands []candidate) *Backend {
	var best candidate
	ties := 0
	for _, c := range cands {
		switch {
		case best.b == nil || (best.drain && !c.drain) || (c.drain == best.drain && c.load < best.load):
			best, ties = c, 1
		case c.drain == best.drain && c.load == best.load:
			ties++ // reservoir sampling among equals
			if rand.IntN(ties) == 0 {
				best = c
			}
		}
	}
	return best.b
}

func matches(strategy string, b *Backend, host string) bool {
	switch strategy {
	case Default:
		return true
	case DestHost:
		return b.Ident.MatchesHost(host)
	case DefaultRoute:
		return b.Ident.DefaultRoute
	case CIDR:
		return b.Ident.InCIDR(host)
	}
	return false
}

// maxAttempts bounds how many agents one dial tries when links break under it.
const maxAttempts = 3

// Dial picks an agent for address and dials through it. When the chosen
// link breaks during the dial, it tries another agent.
func (r *Registry) Dial(ctx context.Context, address string) (net.Conn, error) {
	var tried []*Backend
	var errs []error
	var passed []string // agents that filled up between Pick and reserve
	for range maxAttempts {
		b, err := r.Pick(address, tried)
		switch {
		case err == nil:
		case len(errs) > 0:
			return nil, errors.Join(errs...)
		case link.ReasonOf(err) == link.ReasonBusy:
			return nil, err
		case len(passed) > 0:
			return nil, r.busy(address, passed)
		default:
			return nil, &link.DialError{Address: address, Reason: link.ReasonNoAgent, Err: err}
		}
		release, ok := r.reserve(b.AgentID)
		if !ok {
			tried, passed = append(tried, b), append(passed, b.AgentID)
			continue
		}
		c, err := b.Link.Dial(ctx, address)
		release()
		if err == nil {
			return c, nil
		}
		if link.ReasonOf(err) != link.ReasonLinkClosed || ctx.Err() != nil {
			return nil, err
		}
		tried = append(tried, b)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, r.busy(address, passed)
	}
	return nil, errors.Join(errs...)
}
