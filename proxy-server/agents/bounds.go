package agents

import (
	"fmt"
	"time"

	"isthmus.dev/proxy-server/auth"
	"isthmus.dev/tunnel/limits"
)

// DefaultMaxLinksPerAgent bounds the links one agent id may hold to this
// server at once (--max-links-per-agent). An agent holds one per server; a
// second lives for a while when it reconnects before the server noticed
// that the old link is gone, or when it reaches a server it already holds
// through a load balancer.
//
// The identity is the agent id, not the service account of token
// authentication: every agent of a DaemonSet shares one service account,
// so a bound per service account would be a bound on the cluster's size.
const DefaultMaxLinksPerAgent = 4

// DefaultHandshakeTimeout bounds an agent's TLS handshake on the agent
// port, then the link's own handshake (--agent-handshake-timeout).
const DefaultHandshakeTimeout = 10 * time.Second

// TooManyLinks is the agent_refusals_total reason of an agent id refused
// for holding MaxLinksPerAgent links already.
const TooManyLinks auth.Reason = "too_many_links"

// LinkLimitError refuses a link of an agent id that holds its bound of
// links already. Its message is what the agent is told.
type LinkLimitError struct {
	AgentID string
	Links   int
}

func (e *LinkLimitError) Error() string {
	return fmt.Sprintf("agent refused: %s: agent id %q holds %d links to this server already (proxy-server --max-links-per-agent); is another agent running with the same --agent-id?",
		TooManyLinks, limits.Clip(e.AgentID), e.Links)
}

// claim counts one more link of agentID unless it holds MaxLinksPerAgent
// already; release gives it back (once the link has ended).
func (s *Server) claim(agentID string) (release func(), err error) {
	max := s.MaxLinksPerAgent
	if max <= 0 {
		max = DefaultMaxLinksPerAgent
	}
	s.idsMu.Lock()
	defer s.idsMu.Unlock()
	if s.links == nil {
		s.links = map[string]int{}
	}
	if n := s.links[agentID]; n >= max {
		return nil, &LinkLimitError{AgentID: agentID, Links: n}
	}
	s.links[agentID]++
	released := false
	return func() {
		s.idsMu.Lock()
		defer s.idsMu.Unlock()
		if released {
			return
		}
		released = true
		if s.links[agentID]--; s.links[agentID] <= 0 {
			delete(s.links, agentID)
		}
	}, nil
}

// tooManyLinks counts and logs (rate limited) a link refused by claim.
func (s *Server) tooManyLinks(kind, remote string, err *LinkLimitError) {
	s.Metrics.refused(kind, TooManyLinks)
	s.Limits.Hit(limits.AgentLinksPerIdentity, "agent link refused: this agent id holds --max-links-per-agent links already (two agents with one --agent-id, or an agent reconnecting in a loop)",
		"agent", limits.Clip(err.AgentID), "link", kind, "links", err.Links, "remote", remote)
}
