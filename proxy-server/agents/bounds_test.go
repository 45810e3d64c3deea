package agents

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/native"
)

// boundedPort is startPortWith with the bounds' counter wired, and tune
// applied.
func boundedPort(t *testing.T, tune func(*Server, *Port)) (*port, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return startPortWith(t, false, func(s *Server, p *Port) {
		h, err := limits.New(limits.Config{Registerer: reg, Subsystem: "server", Limits: limits.ServerLimits, Log: s.Log})
		if err != nil {
			t.Fatal(err)
		}
		s.Limits, p.Limits = h, h
		tune(s, p)
	}), reg
}

func hits(t *testing.T, reg *prometheus.Registry, limit string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == limit {
				return int(m.GetCounter().GetValue())
			}
		}
	}
	return -1
}

// One agent id holds at most MaxLinksPerAgent links, on both links; the
// excess is refused with a reason the agent gets, counted, and logged; a
// link that ends gives its place back.
func TestLinksPerAgentID(t *testing.T) {
	p, reg := boundedPort(t, func(s *Server, _ *Port) { s.MaxLinksPerAgent = 2 })
	for range 2 {
		if err := p.connectNative(t, "dup", "", ""); err != nil {
			t.Fatalf("a link within the bound: %v", err)
		}
	}
	// The third link with this id: refused whichever link it comes on.
	err := p.connectNative(t, "dup", "", "")
	if !errors.Is(err, native.ErrRefused) || !strings.Contains(err.Error(), "too_many_links") || !strings.Contains(err.Error(), "--max-links-per-agent") {
		t.Fatalf("native: %v, want a refusal naming the reason and the flag", err)
	}
	err = p.connectANP(t, metadata.Pairs(anp.MDAgentID, "dup"))
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "too_many_links") {
		t.Fatalf("anp: %v, want ResourceExhausted saying too_many_links", err)
	}
	// Other ids are not concerned.
	if err := p.connectANP(t, metadata.Pairs(anp.MDAgentID, "other")); err != nil {
		t.Fatalf("another agent id: %v", err)
	}
	waitAgents(t, p.registry, 3)
	if p.refusals(LinkNative, TooManyLinks) != 1 || p.refusals(LinkANP, TooManyLinks) != 1 {
		t.Errorf("agent_refusals_total{reason=too_many_links}: native %d, anp %d; want 1 each",
			p.refusals(LinkNative, TooManyLinks), p.refusals(LinkANP, TooManyLinks))
	}
	if n := hits(t, reg, limits.AgentLinksPerIdentity); n != 2 {
		t.Errorf("limit_hits_total{agent_links_per_identity} = %d, want 2", n)
	}
	if lines := p.logs.lines("limit=agent_links_per_identity", "agent=dup"); len(lines) != 2 {
		t.Errorf("%d log lines about the refusals, want 2: %q", len(lines), lines)
	}
}

// A link that ends gives its place back.
func TestLinkEndFreesItsPlace(t *testing.T) {
	p, _ := boundedPort(t, func(s *Server, _ *Port) { s.MaxLinksPerAgent = 1 })
	cc, cancel := p.openANP(t, "solo")
	waitAgents(t, p.registry, 1)
	if err := p.connectNative(t, "solo", "", ""); err == nil || !strings.Contains(err.Error(), "too_many_links") {
		t.Fatalf("second link: %v, want too_many_links", err)
	}
	cancel()
	cc.Close()
	waitAgents(t, p.registry, 0)
	if err := p.connectNative(t, "solo", "", ""); err != nil {
		t.Fatalf("after the first link ended: %v", err)
	}
}

// A TLS client that never finishes its handshake is cut after
// HandshakeTimeout, and counted.
func TestTLSHandshakeTimeout(t *testing.T) {
	p, reg := boundedPort(t, func(_ *Server, pt *Port) { pt.HandshakeTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello, and no more
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	took := time.Since(start)
	if err != nil || took < 150*time.Millisecond {
		t.Fatalf("connection ended after %v with %v; want a close (EOF) after the 200ms timeout", took, err)
	}
	waitHits(t, reg, limits.AgentHandshakeTime, 1)
}

// A native agent that finishes TLS and then says nothing is cut after the
// link's handshake timeout; one whose hello is above the control message
// bound is refused. Both are counted.
func TestNativeHelloBounds(t *testing.T) {
	p, reg := boundedPort(t, func(_ *Server, pt *Port) {
		pt.Native = native.Config{HandshakeTimeout: 200 * time.Millisecond, MaxControlMessage: native.MinControlMessage}
	})
	tc, err := tls.Dial("tcp", p.addr, &tls.Config{RootCAs: p.rootCAs, ServerName: "localhost", NextProtos: []string{native.ALPN}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(tc); err != nil {
		t.Fatalf("a silent native agent: %v, want the server to close", err)
	}
	waitHits(t, reg, limits.AgentHandshakeTime, 1)

	err = p.connectNative(t, "big", "", strings.Repeat("t", 2*native.MinControlMessage))
	if !errors.Is(err, native.ErrRefused) || !strings.Contains(err.Error(), "control message too large") {
		t.Fatalf("hello above the bound: %v", err)
	}
	waitHits(t, reg, limits.ControlMessageBytes, 1)
}

func waitHits(t *testing.T, reg *prometheus.Registry, limit string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for hits(t, reg, limit) != want {
		if time.Now().After(deadline) {
			t.Fatalf("limit_hits_total{%s} = %d, want %d", limit, hits(t, reg, limit), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openANP opens an ANP link for agentID and keeps it until cancel.
func (p *port) openANP(t *testing.T, agentID string) (io.Closer, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), metadata.Pairs(anp.MDAgentID, agentID)))
	cc := p.grpcClient(t)
	s, err := anp.OpenAgentStream(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Header(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return cc, cancel
}

func (p *port) grpcClient(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: p.rootCAs, ServerName: "localhost", MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}
