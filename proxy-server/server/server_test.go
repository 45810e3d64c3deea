package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	kclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"isthmus.dev/certs"
	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
	"isthmus.dev/tunnel/native"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testConfig is a server on loopback with client certificates, its
// frontend on a Unix socket.
func testConfig(t *testing.T) (Config, *certs.Bundle) {
	t.Helper()
	dir := t.TempDir()
	b, err := certs.NewBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.UDSName, cfg.ServerPort = filepath.Join(dir, "s.sock"), 0
	cfg.AgentBindAddress, cfg.AgentPort = "127.0.0.1", freePort(t)
	cfg.HealthBindAddress, cfg.HealthPort = "127.0.0.1", freePort(t)
	cfg.AdminPort = 0
	cfg.ClusterCert, cfg.ClusterKey, cfg.ClusterCACert = b.AgentPortCert, b.AgentPortKey, b.CACert
	cfg.ServerID = "s1"
	return cfg, b
}

// start runs s until the test ends; the returned channel gets Run's result.
func start(t *testing.T, s *Server) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	var result error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			result = <-done
		}
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// agentTLS is the client side of the agent port's TLS, with b's agent
// certificate.
func agentTLS(t *testing.T, b *certs.Bundle) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(b.AgentCert, b.AgentKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(b.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// agentLink is an agent's end of either link.
type agentLink interface {
	link.Acceptor
	Run(ctx context.Context) error
}

// serveAgentLink runs l, dialing what the server asks for, until the test
// ends (then cancel, and closer), and waits until s has the agent.
func serveAgentLink(t *testing.T, s *Server, ctx context.Context, cancel context.CancelFunc, l agentLink, closer io.Closer) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		go linktest.Serve(ctx, l, func(ctx context.Context, address string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", address)
		})
		_ = l.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done; _ = closer.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Agents()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("agent not registered")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// connectANPAgent connects an ANP-link agent that dials what the server
// asks for, until the test ends.
func connectANPAgent(t *testing.T, s *Server, b *certs.Bundle, id string) {
	t.Helper()
	cc, err := grpc.NewClient(s.Addrs().Agent.String(), grpc.WithTransportCredentials(credentials.NewTLS(agentTLS(t, b))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), metadata.Pairs(anp.MDAgentID, id)))
	stream, err := anp.OpenAgentStream(ctx, cc)
	if err == nil {
		_, err = stream.Header()
	}
	if err != nil {
		cancel()
		_ = cc.Close()
		t.Fatal(err)
	}
	serveAgentLink(t, s, ctx, cancel, anp.NewAgentLink(stream, anp.AgentOptions{}), cc)
}

// connectNativeAgent connects a native-link agent that dials what the
// server asks for, until the test ends.
func connectNativeAgent(t *testing.T, s *Server, b *certs.Bundle, id string) {
	t.Helper()
	tc := agentTLS(t, b)
	tc.NextProtos = []string{native.ALPN}
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := (&tls.Dialer{Config: tc}).DialContext(ctx, "tcp", s.Addrs().Agent.String())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	l, _, err := native.Connect(ctx, conn, native.Hello{AgentID: id}, native.AgentOptions{})
	if err != nil {
		cancel()
		_ = conn.Close()
		t.Fatal(err)
	}
	serveAgentLink(t, s, ctx, cancel, l, conn)
}

// withAgent runs a server of testConfig (gRPC frontend) with one agent on
// the link named ("anp" or "native"), and an echo backend, until the test
// ends.
func withAgent(t *testing.T, linkName string) (cfg Config, s *Server, backend string) {
	t.Helper()
	cfg, b := testConfig(t)
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	start(t, s)
	if linkName == "native" {
		connectNativeAgent(t, s, b, "agent-1")
	} else {
		connectANPAgent(t, s, b, "agent-1")
	}
	return cfg, s, echoBackend(t)
}

func echoBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// value is the value of the series name{labels} in reg, or -1.
func value(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue series
				}
			}
			return metricValue(m)
		}
	}
	return -1
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return -1
}

// TestTrafficIsMeasuredWithANPNames: one dial through the gRPC frontend and
// an ANP-link agent shows in ANP's metrics, on every segment.
func TestTrafficIsMeasuredWithANPNames(t *testing.T) {
	cfg, s, backend := withAgent(t, "anp")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tun, err := kclient.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), "passthrough:///"+cfg.UDSName,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", cfg.UDSName)
		}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tun.DialContext(ctx, "tcp", backend)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo %q, %v", got, err)
	}

	reg := s.metrics.reg
	const p = "konnectivity_network_proxy_server_"
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"build_info", nil, 1},
		{"ready_backends", map[string]string{"proxy_strategy": "default"}, 1},
		{"grpc_connections", map[string]string{"service_method": "Connect"}, 1},
		{"grpc_connections", map[string]string{"service_method": "Proxy"}, 1},
		{"pending_backend_dials", nil, 0},
		{"http_connections", nil, 0},
		{"dial_duration_seconds", nil, 1},
		{"agent_links", map[string]string{"link": "anp"}, 1},
		{"stream_packets_total", map[string]string{"segment": "from_client", "packet_type": "DIAL_REQ"}, 1},
		{"stream_packets_total", map[string]string{"segment": "to_client", "packet_type": "DIAL_RSP"}, 1},
		{"stream_packets_total", map[string]string{"segment": "to_agent", "packet_type": "DIAL_REQ"}, 1},
		{"stream_packets_total", map[string]string{"segment": "from_agent", "packet_type": "DIAL_RSP"}, 1},
		{"stream_packets_total", map[string]string{"segment": "from_client", "packet_type": "DATA"}, 1},
	} {
		if v := value(t, reg, p+tc.name, tc.labels); v != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, v, tc.want)
		}
	}
	_ = c.Close()

	// The health port serves the same registry.
	resp, err := http.Get("http://" + s.Addrs().Health.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), p+`build_info{commit=`) {
		t.Errorf("/metrics lacks build_info")
	}
}

// TestTokenAuthUsesTheClient: token authentication reviews through the
// configured client, asking for the audience; the answer decides.
func TestTokenAuthUsesTheClient(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.ClusterCACert = ""
	cfg.AgentNamespace, cfg.AgentServiceAccount, cfg.AuthenticationAudience = "kube-system", "konnectivity-agent", "system:konnectivity-server"
	client := fake.NewClientset()
	var asked []authv1.TokenReviewSpec
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenReview).DeepCopy()
		asked = append(asked, tr.Spec)
		tr.Status = authv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences,
			User: authv1.UserInfo{Username: "system:serviceaccount:kube-system:default"}}
		return true, tr, nil
	})
	cfg.Client = client
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = s.auth.Authenticate(t.Context(), "a1", "some-token")
	if err == nil || !strings.Contains(err.Error(), "service-account token refused: wrong_service_account") {
		t.Fatalf("%v, want wrong_service_account", err)
	}
	if len(asked) != 1 || asked[0].Token != "some-token" || len(asked[0].Audiences) != 1 || asked[0].Audiences[0] != "system:konnectivity-server" {
		t.Fatalf("TokenReviews asked: %+v", asked)
	}
	if v := value(t, s.metrics.reg, "konnectivity_network_proxy_server_token_reviews_total", map[string]string{"source": "api", "result": "refused"}); v != 1 {
		t.Errorf("token_reviews_total{api,refused} = %v", v)
	}
}

// TestLeaseReleasedOnGracefulStop: with the lease controller, the server's
// lease exists while it runs and is deleted when it stops.
func TestLeaseReleasedOnGracefulStop(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.EnableLeaseController = true
	client := fake.NewClientset()
	cfg.Client = client
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, s)
	leases := client.CoordinationV1().Leases("kube-system")
	name := "konnectivity-proxy-server-s1"
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := leases.Get(t.Context(), name, metav1.GetOptions{})
		if err == nil {
			if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "s1" || l.Labels["k8s-app"] != "konnectivity-server" {
				t.Fatalf("lease %+v", l)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no lease: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := leases.Get(t.Context(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after a graceful stop the lease is still there: %v", err)
	}
	if _, err := os.Stat(cfg.UDSName); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestListenFailureIsReported(t *testing.T) {
	cfg, _ := testConfig(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg.AgentPort = busy.Addr().(*net.TCPAddr).Port
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "agent port: listen (--agent-port)") {
		t.Fatalf("%v, want the agent port's listen error", err)
	}
	if _, err := os.Stat(cfg.UDSName); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("frontend socket left bound after the failed start: %v", err)
	}
}

// TestAFailedListenerEndsTheGroup: Run waits on the group's context; a
// listener that fails or quits ends it with its name, the others are
// stopped by Run's shutdown.
func TestAFailedListenerEndsTheGroup(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func() error
		want string
	}{
		{"error", func() error { return errors.New("accept: too many open files") }, "health listener: accept: too many open files"},
		{"quit", func() error { return nil }, "health listener: stopped accepting connections"},
		{"closed", func() error { return net.ErrClosed }, "health listener: stopped accepting connections"},
	} {
		g, gctx := errgroup.WithContext(context.Background())
		var stopping atomic.Bool
		other := make(chan struct{})
		serveAll(g, &stopping, []listener{
			{"health", tc.fail},
			{"agent", func() error { <-other; return net.ErrClosed }},
		})
		<-gctx.Done()
		stopping.Store(true)
		close(other) // Run's shutdown
		if err := g.Wait(); err == nil || err.Error() != tc.want {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
