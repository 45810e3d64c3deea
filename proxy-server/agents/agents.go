// Package agents accepts agent links on the agent port (8132): it checks an
// agent's connect metadata and credentials, answers with the server's id
// and count, and registers the link with the router for as long as it
// lives. A refused agent is never registered: it is told why, the server
// logs one line and counts it.
package agents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/proxy-server/auth"
	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/ident"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/native"
)

// Link kinds: the link label of the agent metrics and the routing.Backend
// Kind.
const (
	LinkANP    = "anp"
	LinkNative = "native"
)

// Authenticator checks an agent's bearer token (empty when none was sent).
// A refusal is a *auth.RefusedError, whose message the agent is told.
type Authenticator interface {
	Authenticate(ctx context.Context, agentID, token string) error
}

// Server implements /AgentService/Connect (the ANP agent link) and serves
// native links (ServeNative).
type Server struct {
	ServerID    string
	ServerCount int
	Registry    *routing.Registry
	// Auth checks agents' service-account tokens; nil: token
	// authentication is off, and a token an agent sends is not looked at.
	Auth Authenticator
	// ClientCerts says agents are authenticated by a client certificate
	// (--cluster-ca-cert); for the logs only, TLS enforces it.
	ClientCerts bool
	QueueBytes  int // per-connection receive queue; 0 = default
	// StallTimeout: a full queue whose reader takes nothing this long is closed; 0 = default.
	StallTimeout time.Duration
	// MaxLinksPerAgent bounds the links one agent id may hold at once; 0 =
	// DefaultMaxLinksPerAgent.
	MaxLinksPerAgent int
	Log              *slog.Logger
	Metrics          *Metrics     // nil: not measured
	Observer         anp.Observer // sees the ANP links' packets; nil: none
	Limits           *limits.Hits // counts and logs the bounds hit; nil: neither

	idsMu sync.Mutex
	links map[string]int // links by agent id (claim)
}

// Register adds the service to s.
func (s *Server) Register(g *grpc.Server) { g.RegisterService(&anp.AgentServiceDesc, s) }

// Connect serves one agent's stream for as long as it lives.
func (s *Server) Connect(stream grpc.BidiStreamingServer[client.Packet, client.Packet]) error {
	ctx := stream.Context()
	remote := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		remote = p.Addr.String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	agentID, idents, err := parseMetadata(md)
	if err != nil {
		s.refused(LinkANP, agentID, remote, err)
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.checkANPToken(ctx, agentID, md); err != nil {
		s.refused(LinkANP, agentID, remote, err)
		return status.Error(codes.Unauthenticated, err.Error())
	}
	release, err := s.claim(agentID)
	if err != nil {
		s.tooManyLinks(LinkANP, remote, err.(*LinkLimitError))
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	defer release()
	log := s.Log.With("agent", agentID)
	hdr := metadata.Pairs(anp.MDServerID, s.ServerID, anp.MDServerCount, strconv.Itoa(s.ServerCount))
	if err := stream.SendHeader(hdr); err != nil {
		return fmt.Errorf("agent %s: send headers: %w", agentID, err)
	}
	l := anp.NewServerLink(stream, anp.ServerOptions{AgentID: agentID, Log: log, QueueBytes: s.QueueBytes,
		StallTimeout: s.StallTimeout, Observer: s.Observer})
	s.serve(ctx, &routing.Backend{AgentID: agentID, Kind: LinkANP, Ident: idents, Link: l}, l.Run)
	return nil
}

// checkANPToken checks the bearer token of the ANP link's metadata when
// token authentication is on.
func (s *Server) checkANPToken(ctx context.Context, agentID string, md metadata.MD) error {
	if s.Auth == nil {
		s.tokenIgnored(LinkANP, agentID, len(md.Get(anp.MDAuthorization)) > 0)
		return nil
	}
	token, err := bearer(md)
	if err != nil {
		return err
	}
	return s.Auth.Authenticate(ctx, agentID, token)
}

// tokenIgnored: with token authentication off, a token the agent sent is
// not looked at; the debug log says what authenticated the agent instead,
// so that nobody takes the token for checked.
func (s *Server) tokenIgnored(kind, agentID string, sent bool) {
	if !sent {
		return
	}
	by := "its client certificate (--cluster-ca-cert)"
	if !s.ClientCerts {
		by = "nothing (--allow-unauthenticated-agents)"
	}
	s.Log.Debug("agent sent a service-account token, but token authentication is off (no --agent-namespace, --agent-service-account, --authentication-audience): not checked; the agent is authenticated by "+by,
		"agent", agentID, "link", kind)
}

// refused logs and counts a refused agent: one line, with its reason.
func (s *Server) refused(kind, agentID, remote string, err error) {
	reason := auth.BadMetadata
	if re := (*auth.RefusedError)(nil); errors.As(err, &re) {
		reason = re.Reason
	}
	s.Metrics.refused(kind, reason)
	s.Log.Warn("agent refused", "agent", agentID, "link", kind, "reason", string(reason), "remote", remote, "err", err)
}

// serve makes b routable while run serves its link.
func (s *Server) serve(ctx context.Context, b *routing.Backend, run func(context.Context) error) {
	s.up(b)
	s.down(b, run(ctx))
}

// up counts b's link, and makes b routable: counted first, so that an
// agent that can be routed to is always in agent_links.
func (s *Server) up(b *routing.Backend) {
	s.Metrics.linkUp(b.Kind)
	s.Registry.Add(b)
}

// down says why b's link ended, and takes b out of routing.
func (s *Server) down(b *routing.Backend, err error) {
	defer s.Metrics.linkDown(b.Kind)
	defer s.Registry.Remove(b)
	if errors.Is(err, native.ErrControlTooLarge) {
		s.Limits.Hit(limits.ControlMessageBytes, "agent link ended: the agent sent a control message larger than --max-control-message-bytes (a protocol violation)",
			"agent", b.AgentID, "link", b.Kind, "err", err)
		return
	}
	s.Log.Info("agent link ended", "agent", b.AgentID, "link", b.Kind, "err", err)
}

// parseMetadata reads ANP's connect metadata: exactly one agentID and at
// most one agentIdentifiers. Errors are *auth.RefusedError (bad_metadata).
func parseMetadata(md metadata.MD) (agentID string, id ident.Identifiers, err error) {
	ids := md.Get(anp.MDAgentID)
	if len(ids) != 1 || strings.TrimSpace(ids[0]) == "" {
		return "", id, &auth.RefusedError{Reason: auth.BadMetadata,
			Detail: fmt.Sprintf("want exactly one non-empty %s in the metadata, got %d", anp.MDAgentID, len(ids))}
	}
	agentID = ids[0]
	switch v := md.Get(anp.MDAgentIdentifiers); len(v) {
	case 0:
	case 1:
		if id, err = ident.Parse(v[0]); err != nil {
			return agentID, id, &auth.RefusedError{Reason: auth.BadMetadata, Detail: anp.MDAgentIdentifiers, Err: err}
		}
	default:
		return agentID, id, &auth.RefusedError{Reason: auth.BadMetadata,
			Detail: fmt.Sprintf("%s given %d times", anp.MDAgentIdentifiers, len(v))}
	}
	return agentID, id, nil
}

// bearer reads the token of ANP's "authorization: Bearer <token>" metadata
// ("" when there is none).
func bearer(md metadata.MD) (string, error) {
	v := md.Get(anp.MDAuthorization)
	switch len(v) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", &auth.RefusedError{Reason: auth.MalformedToken, Detail: fmt.Sprintf("%d authorization entries in the metadata, want one", len(v))}
	}
	t, ok := strings.CutPrefix(v[0], "Bearer ")
	if !ok {
		return "", &auth.RefusedError{Reason: auth.MalformedToken, Detail: `the authorization metadata is not "Bearer <token>"`}
	}
	return t, nil
}
