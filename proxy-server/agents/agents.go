// Package agents accepts agent links on the agent port (8132): it checks an
// agent's connect metadata, answers with the server's id and count, and
// registers the link with the router for as long as it lives.
package agents

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/ident"
)

// Authenticator checks an agent's bearer token (empty when none was sent).
type Authenticator interface {
	Authenticate(ctx context.Context, agentID, token string) error
}

// Server implements /AgentService/Connect (the ANP agent link).
type Server struct {
	ServerID    string
	ServerCount int
	Registry    *routing.Registry
	Auth        Authenticator // nil: no token auth
	QueueBytes  int           // per-connection receive queue; 0 = default
	// StallTimeout: a full queue whose reader takes nothing this long is closed; 0 = default.
	StallTimeout time.Duration
	Log          *slog.Logger
	// OnLink, if set, is called when a link starts (+1) and ends (-1).
	OnLink func(delta int)
}

// Register adds the service to s.
func (s *Server) Register(g *grpc.Server) { g.RegisterService(&anp.AgentServiceDesc, s) }

// Connect serves one agent's stream for as long as it lives.
func (s *Server) Connect(stream grpc.BidiStreamingServer[client.Packet, client.Packet]) error {
	ctx := stream.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	agentID, idents, token, err := parseMetadata(md)
	if err != nil {
		s.Log.Warn("agent refused", "err", err)
		return status.Error(codes.InvalidArgument, err.Error())
	}
	log := s.Log.With("agent", agentID)
	if s.Auth != nil {
		if err := s.Auth.Authenticate(ctx, agentID, token); err != nil {
			log.Warn("agent refused: authentication failed", "err", err)
			return status.Errorf(codes.Unauthenticated, "agent %s: %v", agentID, err)
		}
	}
	hdr := metadata.Pairs(anp.MDServerID, s.ServerID, anp.MDServerCount, strconv.Itoa(s.ServerCount))
	if err := stream.SendHeader(hdr); err != nil {
		return fmt.Errorf("agent %s: send headers: %w", agentID, err)
	}
	l := anp.NewServerLink(stream, anp.ServerOptions{AgentID: agentID, Log: log, QueueBytes: s.QueueBytes, StallTimeout: s.StallTimeout})
	s.serve(ctx, &routing.Backend{AgentID: agentID, Kind: "anp", Ident: idents, Link: l}, l.Run)
	return nil
}

// serve makes b routable while run serves its link.
func (s *Server) serve(ctx context.Context, b *routing.Backend, run func(context.Context) error) {
	s.Registry.Add(b)
	if s.OnLink != nil {
		s.OnLink(1)
		defer s.OnLink(-1)
	}
	defer s.Registry.Remove(b)
	err := run(ctx)
	s.Log.Info("agent link ended", "agent", b.AgentID, "link", b.Kind, "err", err)
}

// parseMetadata reads ANP's connect metadata: exactly one agentID, at most
// one agentIdentifiers, and an optional "Bearer" authorization.
func parseMetadata(md metadata.MD) (agentID string, id ident.Identifiers, token string, err error) {
	ids := md.Get(anp.MDAgentID)
	if len(ids) != 1 || strings.TrimSpace(ids[0]) == "" {
		return "", id, "", fmt.Errorf("want exactly one non-empty %s in the metadata, got %d", anp.MDAgentID, len(ids))
	}
	agentID = ids[0]
	switch v := md.Get(anp.MDAgentIdentifiers); len(v) {
	case 0:
	case 1:
		if id, err = ident.Parse(v[0]); err != nil {
			return "", id, "", fmt.Errorf("agent %s: %w", agentID, err)
		}
	default:
		return "", id, "", fmt.Errorf("agent %s: %s given %d times", agentID, anp.MDAgentIdentifiers, len(v))
	}
	if auth := md.Get(anp.MDAuthorization); len(auth) > 0 {
		t, ok := strings.CutPrefix(auth[0], "Bearer ")
		if !ok {
			return "", id, "", fmt.Errorf("agent %s: authorization is not a Bearer token", agentID)
		}
		token = t
	}
	return agentID, id, token, nil
}
