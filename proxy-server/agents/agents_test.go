package agents

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authv1 "k8s.io/api/authentication/v1"

	"isthmus.dev/certs"
	"isthmus.dev/proxy-server/auth"
	"isthmus.dev/proxy-server/routing"
	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/native"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const agentSA = "system:serviceaccount:kube-system:konnectivity-agent"

// tokens answers TokenReviews as kube-apiserver would for the tokens it
// knows; any other token is not authenticated.
type tokens map[string]authv1.TokenReviewStatus

func (t tokens) Review(_ context.Context, token string, _ []string) (authv1.TokenReviewStatus, error) {
	if st, ok := t[token]; ok {
		return st, nil
	}
	return authv1.TokenReviewStatus{Error: "invalid bearer token"}, nil
}

var reviews = tokens{
	"good":     {Authenticated: true, User: authv1.UserInfo{Username: agentSA}, Audiences: []string{"system:konnectivity-server"}},
	"other-sa": {Authenticated: true, User: authv1.UserInfo{Username: "system:serviceaccount:kube-system:default"}, Audiences: []string{"system:konnectivity-server"}},
}

// logBuffer collects log lines from several goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the lines containing every one of subs.
func (l *logBuffer) lines(subs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for line := range strings.Lines(l.b.String()) {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

type port struct {
	addr     string
	registry *routing.Registry
	metrics  *Metrics
	logs     *logBuffer
	rootCAs  *x509.CertPool
}

// startPort serves an agent port on loopback, with token authentication
// when withAuth is set.
func startPort(t *testing.T, withAuth bool) *port { t.Helper(); return startPortWith(t, withAuth, nil) }

// startPortWith is startPort with tune applied to the server and the port
// before they serve.
func startPortWith(t *testing.T, withAuth bool, tune func(*Server, *Port)) *port {
	t.Helper()
	b, err := certs.NewBundle(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(b.AgentPortCert, b.AgentPortKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(b.CACert)
	if err != nil {
		t.Fatal(err)
	}
	p := &port{registry: routing.NewRegistry([]string{routing.Default}, nil), logs: &logBuffer{}, rootCAs: x509.NewCertPool()}
	p.rootCAs.AppendCertsFromPEM(caPEM)
	if p.metrics, err = NewMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := &Server{ServerID: "s1", ServerCount: 1, Registry: p.registry, Log: log, Metrics: p.metrics}
	if withAuth {
		a, err := auth.New(auth.Config{Reviewer: reviews, Namespace: "kube-system", ServiceAccount: "konnectivity-agent",
			Audience: "system:konnectivity-server"})
		if err != nil {
			t.Fatal(err)
		}
		srv.Auth = a
	}
	g := grpc.NewServer(grpc.Creds(HandshakenCreds()))
	srv.Register(g)
	pt := &Port{TLS: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, GRPC: g, Agents: srv, Log: log}
	if tune != nil {
		tune(srv, pt)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = pt.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); g.Stop(); <-done })
	return p
}

// connectNative runs a native agent handshake; it returns the link's
// error, and closes a link that was accepted when the test ends.
func (p *port) connectNative(t *testing.T, agentID, identifiers, token string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tc, err := (&tls.Dialer{Config: &tls.Config{RootCAs: p.rootCAs, ServerName: "localhost", NextProtos: []string{native.ALPN}, MinVersion: tls.VersionTLS12}}).DialContext(ctx, "tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	l, _, err := native.Connect(ctx, tc, native.Hello{AgentID: agentID, Identifiers: identifiers, Token: token}, native.AgentOptions{})
	if err != nil {
		return err
	}
	t.Cleanup(func() { _ = l.Close() })
	return nil
}

// connectANP opens /AgentService/Connect with md; it returns the status
// the server ended the stream with, nil when it answered with its headers.
func (p *port) connectANP(t *testing.T, md metadata.MD) error {
	t.Helper()
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: p.rootCAs, ServerName: "localhost", MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), md))
	t.Cleanup(cancel)
	s, err := anp.OpenAgentStream(ctx, cc)
	if err != nil {
		return err
	}
	hdr, err := s.Header()
	if err != nil {
		return err
	}
	if len(hdr.Get(anp.MDServerID)) == 1 {
		return nil
	}
	_, err = s.Recv() // a refusal is a trailers-only answer
	return err
}

func bearerMD(token string) metadata.MD {
	return metadata.Pairs(anp.MDAgentID, "a-anp", anp.MDAuthorization, "Bearer "+token)
}

func (p *port) refusals(link string, r auth.Reason) int {
	return int(testutil.ToFloat64(p.metrics.refusals.WithLabelValues(link, string(r))))
}

func TestRefusedAgentsAreToldCountedLoggedOnceAndNeverRouted(t *testing.T) {
	p := startPort(t, true)
	for _, tc := range []struct {
		token string
		want  auth.Reason
	}{
		{"", auth.NoToken},
		{"garbage", auth.TokenInvalid},
		{"other-sa", auth.WrongServiceAccount},
	} {
		t.Run(string(tc.want), func(t *testing.T) {
			prefix := auth.TokenRefusedPrefix + string(tc.want)
			id := "native-" + string(tc.want)
			err := p.connectNative(t, id, "", tc.token)
			if !errors.Is(err, native.ErrRefused) || !strings.Contains(err.Error(), prefix) {
				t.Errorf("native: %v, want a refusal saying %q", err, prefix)
			}
			md := metadata.Pairs(anp.MDAgentID, "anp-"+string(tc.want))
			if tc.token != "" {
				md.Set(anp.MDAuthorization, "Bearer "+tc.token)
			}
			err = p.connectANP(t, md)
			if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || !strings.HasPrefix(st.Message(), prefix) {
				t.Errorf("anp: %v, want Unauthenticated starting with %q", err, prefix)
			}
			for _, link := range []string{LinkNative, LinkANP} {
				if n := p.refusals(link, tc.want); n != 1 {
					t.Errorf("%s: %d refusals counted, want 1", link, n)
				}
				agent := link + "-" + string(tc.want)
				if lines := p.logs.lines("agent="+agent, "reason="+string(tc.want)); len(lines) != 1 {
					t.Errorf("%s: %d log lines about the refusal, want 1: %q", link, len(lines), lines)
				}
			}
		})
	}
	if n := p.registry.Len(); n != 0 {
		t.Fatalf("%d refused agents registered for routing: %v", n, p.registry.Agents())
	}
}

func TestAcceptedAgentsAreRouted(t *testing.T) {
	p := startPort(t, true)
	if err := p.connectNative(t, "a-native", "host=node1", "good"); err != nil {
		t.Fatalf("native: %v", err)
	}
	if err := p.connectANP(t, bearerMD("good")); err != nil {
		t.Fatalf("anp: %v", err)
	}
	waitAgents(t, p.registry, 2)
	for _, link := range []string{LinkNative, LinkANP} {
		if n := testutil.ToFloat64(p.metrics.links.WithLabelValues(link)); n != 1 {
			t.Errorf("agent_links{link=%s} = %v, want 1", link, n)
		}
	}
}

func TestMalformedCredentialsAndMetadata(t *testing.T) {
	p := startPort(t, true)
	err := p.connectANP(t, metadata.Pairs(anp.MDAgentID, "a1", anp.MDAuthorization, "Basic dXNlcjpwdw=="))
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || !strings.HasPrefix(st.Message(), auth.TokenRefusedPrefix+"malformed_token") {
		t.Errorf("non-Bearer authorization: %v", err)
	}
	err = p.connectANP(t, metadata.Pairs(anp.MDAuthorization, "Bearer good"))
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "bad_metadata") {
		t.Errorf("no agentID: %v", err)
	}
	if err := p.connectNative(t, "a2", "ipv4=not-an-ip", "good"); err == nil || !strings.Contains(err.Error(), "agent refused: bad_metadata") {
		t.Errorf("bad identifiers: %v", err)
	}
	if p.refusals(LinkANP, auth.MalformedToken) != 1 || p.refusals(LinkANP, auth.BadMetadata) != 1 || p.refusals(LinkNative, auth.BadMetadata) != 1 {
		t.Errorf("refusals not counted by reason: anp malformed %d, anp metadata %d, native metadata %d", p.refusals(LinkANP, auth.MalformedToken), p.refusals(LinkANP, auth.BadMetadata), p.refusals(LinkNative, auth.BadMetadata))
	}
	if n := p.registry.Len(); n != 0 {
		t.Fatalf("%d refused agents registered", n)
	}
}

// TestTokenIgnoredWithoutTokenAuth: with token authentication off a token
// is not looked at, and the debug log says so instead of claiming it.
func TestTokenIgnoredWithoutTokenAuth(t *testing.T) {
	p := startPort(t, false)
	if err := p.connectNative(t, "a-native", "", "garbage"); err != nil {
		t.Fatalf("native: %v", err)
	}
	if err := p.connectANP(t, metadata.Pairs(anp.MDAgentID, "a-anp", anp.MDAuthorization, "not even bearer")); err != nil {
		t.Fatalf("anp: %v", err)
	}
	waitAgents(t, p.registry, 2)
	for _, id := range []string{"a-native", "a-anp"} {
		if lines := p.logs.lines("level=DEBUG", "token authentication is off", "agent="+id); len(lines) != 1 {
			t.Errorf("%s: %d debug lines about the ignored token, want 1", id, len(lines))
		}
	}
}

func waitAgents(t *testing.T, r *routing.Registry, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.Len() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d agents registered, want %d", r.Len(), n)
		}
		select {
		case <-r.Changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
