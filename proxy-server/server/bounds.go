package server

import (
	"fmt"
	"time"

	"isthmus.dev/proxy-server/agents"
	"isthmus.dev/proxy-server/frontend"
	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/native"
)

// Bounds are the limits proxy-server holds clients and agents to: what
// they may send, how slowly, and how much they may have waiting. Each hit
// is a sample of limit_hits_total{limit} and a rate-limited log line that
// names the flag. DefaultBounds gives the defaults; Validate refuses zero.
type Bounds struct {
	// ConnectMaxHeaderBytes bounds a CONNECT request's header (431 beyond;
	// default 4 KiB: kube-apiserver sends about 60 bytes).
	ConnectMaxHeaderBytes int
	// ConnectHeaderTimeout bounds the time from accept to the end of a
	// CONNECT request's header, TLS handshake included (408 beyond;
	// default 10 s).
	ConnectHeaderTimeout time.Duration
	// MaxPendingDialsPerClient bounds the dials one frontend client (a
	// process on the Unix socket, an IP address over TCP) may have waiting
	// for an agent's answer (default 4096).
	MaxPendingDialsPerClient int
	// MaxPendingDialsPerAgent bounds the dials waiting for one agent's
	// answer; such an agent is passed over (default 1024, the agent's own).
	MaxPendingDialsPerAgent int
	// MaxLinksPerAgent bounds the links one agent id may hold to this
	// server at once (default 4).
	MaxLinksPerAgent int
	// AgentHandshakeTimeout bounds an agent's TLS handshake on the agent
	// port, then its link handshake (native hello, gRPC preface) (default 10 s).
	AgentHandshakeTimeout time.Duration
	// MaxControlMessageBytes bounds a native link control message from an
	// agent (default 64 KiB); a larger one ends the link.
	MaxControlMessageBytes int
}

// DefaultBounds returns the default bounds.
func DefaultBounds() Bounds {
	return Bounds{
		ConnectMaxHeaderBytes:    frontend.DefaultMaxHeaderBytes,
		ConnectHeaderTimeout:     frontend.DefaultHeaderTimeout,
		MaxPendingDialsPerClient: frontend.DefaultMaxPendingPerClient,
		MaxPendingDialsPerAgent:  routing.DefaultMaxPendingPerAgent,
		MaxLinksPerAgent:         agents.DefaultMaxLinksPerAgent,
		AgentHandshakeTimeout:    agents.DefaultHandshakeTimeout,
		MaxControlMessageBytes:   native.MaxControlFrame,
	}
}

// Ranges of the byte and count bounds.
const (
	minHeaderBytes = 512
	maxHeaderBytes = 1 << 20
	maxCount       = 1 << 20
)

func (b *Bounds) validate() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if b.ConnectMaxHeaderBytes < minHeaderBytes || b.ConnectMaxHeaderBytes > maxHeaderBytes {
		bad("--connect-max-header-bytes %d: want %d to %d (kube-apiserver's CONNECT request is about 60 bytes)", b.ConnectMaxHeaderBytes, minHeaderBytes, maxHeaderBytes)
	}
	for name, d := range map[string]time.Duration{"--connect-header-timeout": b.ConnectHeaderTimeout, "--agent-handshake-timeout": b.AgentHandshakeTimeout} {
		if d <= 0 || d > 10*time.Minute {
			bad("%s %v: want more than 0 and at most 10m", name, d)
		}
	}
	for name, n := range map[string]int{"--max-pending-dials-per-client": b.MaxPendingDialsPerClient,
		"--max-pending-dials-per-agent": b.MaxPendingDialsPerAgent, "--max-links-per-agent": b.MaxLinksPerAgent} {
		if n < 1 || n > maxCount {
			bad("%s %d: want 1 to %d", name, n, maxCount)
		}
	}
	if b.MaxControlMessageBytes < native.MinControlMessage || b.MaxControlMessageBytes > native.MaxControlMessage {
		bad("--max-control-message-bytes %d: want %d to %d (an agent's hello, with its token, is a few KiB)", b.MaxControlMessageBytes, native.MinControlMessage, native.MaxControlMessage)
	}
	return errs
}

// nativeConfig is the native link's configuration under b.
func (b *Bounds) nativeConfig(window uint32, mux string) native.Config {
	return native.Config{Mux: mux, StreamWindow: window, HandshakeTimeout: b.AgentHandshakeTimeout, MaxControlMessage: b.MaxControlMessageBytes}
}

// limitRegistry bounds the dials waiting for each agent and counts the
// refusals.
func (b *Bounds) limitRegistry(r *routing.Registry, hits *limits.Hits) {
	r.LimitPending(b.MaxPendingDialsPerAgent, func(address string, ids []string) {
		hits.Hit(limits.PendingDialsAgent, "dial refused: every agent that could carry it has --max-pending-dials-per-agent dials waiting for its answer (the agents answer slowly, or too many dials at once)",
			"address", limits.Clip(address), "agents", limits.Clip(fmt.Sprint(ids)), "reason", link.ReasonBusy)
	})
}
