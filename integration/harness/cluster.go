package harness

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	kclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"isthmus.dev/certs"
)

// Impl picks whose binary runs a role.
type Impl string

// The implementations.
const (
	Isthmus  Impl = "isthmus"
	Upstream Impl = "anp"
)

// Frontend modes and transports.
const (
	GRPC        = "grpc"
	HTTPConnect = "http-connect"
	UDS         = "uds"
	TCP         = "tcp"
)

// ServerOpts describe a proxy-server to start.
type ServerOpts struct {
	Impl      Impl
	Mode      string // GRPC or HTTPConnect
	Transport string // UDS or TCP
	ID        string
	Count     int
	AgentPort int    // 0: a free port
	UDSName   string // with Transport UDS: the socket's path; "": a new UDSPath
	Auth      ServerAuth
	Extra     []string // more flags
}

// Server is a running proxy-server process.
type Server struct {
	*Proc
	Opts       ServerOpts
	PKI        *certs.Bundle
	UDS        string // frontend socket (UDS)
	Frontend   string // frontend host:port (TCP)
	AgentPort  int
	HealthPort int
	args       []string
	bin        string
}

// NewPKI makes a certificate bundle in a test temp dir; its private keys
// are registered as secrets (RegisterBundle).
func NewPKI(t testing.TB) *certs.Bundle {
	t.Helper()
	b, err := certs.NewBundle(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	RegisterBundle(t, b) // no process may print its keys (secrets.go)
	return b
}

// UDSPath is a path for a Unix socket in a new directory removed at
// cleanup, short enough for the 108-byte limit of socket paths.
func UDSPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "isthmus-uds-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "proxy.sock")
}

// StartServer starts a proxy-server and waits for its health port.
func StartServer(t testing.TB, bins Binaries, pki *certs.Bundle, o ServerOpts) *Server {
	t.Helper()
	s := NewServer(t, bins, pki, o)
	s.start(t)
	return s
}

// NewServer prepares a proxy-server's command line without starting it
// (see Bin and Args): for a test that expects it to refuse to start.
func NewServer(t testing.TB, bins Binaries, pki *certs.Bundle, o ServerOpts) *Server {
	t.Helper()
	if o.Impl == "" {
		o.Impl = Isthmus
	}
	if o.Mode == "" {
		o.Mode = GRPC
	}
	if o.Transport == "" {
		o.Transport = UDS
	}
	if o.ID == "" {
		o.ID = "server-" + strconv.Itoa(FreePort(t))
	}
	if o.Count == 0 {
		o.Count = 1
	}
	freePort := freePortFor(o.Impl) // upstream refuses ports above 49151
	if o.AgentPort == 0 {
		o.AgentPort = freePort(t)
	}
	s := &Server{Opts: o, PKI: pki, AgentPort: o.AgentPort, HealthPort: freePort(t)}
	args := []string{
		"--mode=" + o.Mode,
		"--agent-port=" + strconv.Itoa(o.AgentPort), "--agent-bind-address=127.0.0.1",
		"--cluster-cert=" + pki.AgentPortCert, "--cluster-key=" + pki.AgentPortKey,
		"--health-port=" + strconv.Itoa(s.HealthPort), "--health-bind-address=127.0.0.1",
		"--admin-port=" + strconv.Itoa(freePort(t)),
		"--server-id=" + o.ID, "--server-count=" + strconv.Itoa(o.Count),
	}
	if o.Transport == UDS {
		s.UDS = o.UDSName
		if s.UDS == "" {
			s.UDS = UDSPath(t)
		}
		args = append(args, "--uds-name="+s.UDS, "--server-port=0")
	} else {
		port := freePort(t)
		s.Frontend = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		args = append(args, "--server-port="+strconv.Itoa(port), "--server-bind-address=127.0.0.1",
			"--server-cert="+pki.FrontendCert, "--server-key="+pki.FrontendKey, "--server-ca-cert="+pki.CACert)
	}
	if o.Impl == Upstream {
		args = append(args, "--logtostderr=true", "-v=1")
	}
	args = append(args, o.Auth.Flags(pki)...)
	s.args = append(args, o.Extra...)
	s.bin = bins.ProxyServer
	if o.Impl == Upstream {
		s.bin = bins.ANPServer
	}
	return s
}

// Bin is the server's program.
func (s *Server) Bin() string { return s.bin }

// Args are the server's flags.
func (s *Server) Args() []string { return s.args }

func (s *Server) start(t testing.TB) {
	t.Helper()
	s.Proc = Start(t, string(s.Opts.Impl)+"-server", s.bin, s.args...)
	s.DumpOnFailure = s.Opts.Impl == Isthmus
	health := "http://127.0.0.1:" + strconv.Itoa(s.HealthPort) + "/healthz"
	WaitFor(t, 30*time.Second, s.Name+" health", func() bool {
		select {
		case <-s.Exited():
			t.Fatalf("%s exited at start:\n%s", s.Name, s.Output())
		default:
		}
		return HTTPStatus(health) == http.StatusOK
	})
}

// Restart kills the server and starts it again with the same flags.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	s.start(t)
}

// ReadyURL is the server's readiness endpoint (200 once an agent is connected).
func (s *Server) ReadyURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(s.HealthPort) + "/readyz"
}

// WaitReady waits until the server reports it is ready (an agent is
// connected).
func (s *Server) WaitReady(t testing.TB) {
	t.Helper()
	WaitFor(t, 30*time.Second, s.Name+" readiness", func() bool { return HTTPStatus(s.ReadyURL()) == http.StatusOK })
}

// AgentOpts describe a proxy-agent to start.
type AgentOpts struct {
	Impl        Impl
	ID          string
	Hosts       string // --proxy-server-host; default 127.0.0.1
	Identifiers string
	Port        int // --proxy-server-port; 0: the server's agent port
	Auth        AgentAuth
	Extra       []string
	Worker      *Worker // run inside this worker's namespace
}

// Agent is a running proxy-agent process.
type Agent struct {
	*Proc
	Opts       AgentOpts
	HealthPort int
	bin        string
	args       []string
}

// StartAgent starts a proxy-agent connecting to s (or to o.Hosts on s's port).
func StartAgent(t testing.TB, bins Binaries, s *Server, o AgentOpts) *Agent {
	t.Helper()
	if o.Impl == "" {
		o.Impl = Isthmus
	}
	if o.ID == "" {
		o.ID = "agent-" + strconv.Itoa(FreePort(t))
	}
	if o.Hosts == "" {
		o.Hosts = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = s.AgentPort
	}
	a := &Agent{Opts: o, HealthPort: FreePort(t)}
	a.args = []string{
		"--proxy-server-host=" + o.Hosts, "--proxy-server-port=" + strconv.Itoa(o.Port),
		"--ca-cert=" + s.PKI.CACert, "--agent-id=" + o.ID,
		"--health-server-port=" + strconv.Itoa(a.HealthPort),
		"--admin-server-port=" + strconv.Itoa(FreePort(t)),
		"--sync-interval=100ms", "--sync-interval-cap=1s",
	}
	if o.Identifiers != "" {
		a.args = append(a.args, "--agent-identifiers="+o.Identifiers)
	}
	if o.Impl == Upstream {
		a.args = append(a.args, "--logtostderr=true", "-v=1", "--health-server-host=127.0.0.1")
	} else {
		a.args = append(a.args, "--health-server-host=127.0.0.1")
	}
	a.args = append(a.args, o.Auth.Flags(s.PKI)...)
	a.args = append(a.args, o.Extra...)
	a.bin = bins.ProxyAgent
	if o.Impl == Upstream {
		a.bin = bins.ANPAgent
	}
	if o.Worker != nil {
		a.bin, a.args = o.Worker.Command(a.bin, a.args...)
	}
	a.Proc = Start(t, string(o.Impl)+"-agent-"+o.ID, a.bin, a.args...)
	a.DumpOnFailure = o.Impl == Isthmus
	return a
}

// Restart kills the agent and starts it again with the same flags.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	a.Kill()
	a.StartAgain(t)
}

// StartAgain starts an agent that was killed (Kill) again, with the same
// flags, as its supervisor would.
func (a *Agent) StartAgain(t testing.TB) {
	t.Helper()
	a.Proc = Start(t, a.Name, a.bin, a.args...)
	a.DumpOnFailure = a.Opts.Impl == Isthmus
}

// ReadyURL is the agent's readiness endpoint (200 once it holds every
// server it expects).
func (a *Agent) ReadyURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(a.HealthPort) + "/readyz"
}

// WaitReady waits for the agent's /readyz.
func (a *Agent) WaitReady(t testing.TB) {
	t.Helper()
	WaitFor(t, 30*time.Second, a.Name+" readiness", func() bool { return HTTPStatus(a.ReadyURL()) == http.StatusOK })
}

// ClientTLS is the TLS config of a frontend client in TCP mode.
func ClientTLS(pki *certs.Bundle) (*tls.Config, error) {
	pem, err := os.ReadFile(pki.CACert)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, nil
}

// ConnectError is a non-200 answer to CONNECT.
type ConnectError struct {
	Status     int
	StatusLine string // as Go reads it: "403 Forbidden: reason"
	Line       string // the body's first line
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("CONNECT answered %s: %s", e.StatusLine, e.Line)
}

// DialConnect opens a tunnel through an HTTP CONNECT frontend the way
// kube-apiserver's egress dialer does: a new connection per dial, the exact
// request line, 200 required, and no byte may follow the header in the
// first read (kube-apiserver only tunnels protocols where the client speaks
// first: TLS and HTTP).
func (s *Server) DialConnect(ctx context.Context, target string) (net.Conn, error) {
	c, br, err := s.connect(ctx, target)
	if err != nil {
		return nil, err
	}
	if br.Buffered() > 0 {
		c.Close()
		return nil, errors.New("bytes buffered after the CONNECT response header")
	}
	return c, nil
}

// DialConnectServerFirst is DialConnect for backends that speak first:
// their first bytes may share a read with the 200 header, and are kept.
func (s *Server) DialConnectServerFirst(ctx context.Context, target string) (net.Conn, error) {
	c, br, err := s.connect(ctx, target)
	if err != nil {
		return nil, err
	}
	if br.Buffered() > 0 {
		return &bufferedConn{Conn: c, r: br}, nil
	}
	return c, nil
}

// bufferedConn reads what its bufio.Reader holds before the connection.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (s *Server) connect(ctx context.Context, target string) (net.Conn, *bufio.Reader, error) {
	var c net.Conn
	var err error
	var d net.Dialer
	if s.UDS != "" {
		c, err = d.DialContext(ctx, "unix", s.UDS)
	} else {
		var cfg *tls.Config
		if cfg, err = ClientTLS(s.PKI); err != nil {
			return nil, nil, err
		}
		c, err = (&tls.Dialer{NetDialer: &d, Config: cfg}).DialContext(ctx, "tcp", s.Frontend)
	}
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target); err != nil {
		c.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("read CONNECT response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		c.Close()
		return nil, nil, &ConnectError{Status: resp.StatusCode, StatusLine: resp.Status, Line: line}
	}
	_ = c.SetDeadline(time.Time{})
	return c, br, nil
}

// grpcOpts are the dial options of a konnectivity-client to s.
func (s *Server) grpcOpts() ([]grpc.DialOption, string, error) {
	if s.UDS != "" {
		return []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", s.UDS)
			}),
		}, "passthrough:///" + s.UDS, nil
	}
	cfg, err := ClientTLS(s.PKI)
	if err != nil {
		return nil, "", err
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, s.Frontend, nil
}

// DialGRPC dials target through a gRPC frontend with konnectivity-client's
// CreateSingleUseGrpcTunnel, as kube-apiserver does (one gRPC connection per
// dial).
func (s *Server) DialGRPC(ctx context.Context, target string) (net.Conn, error) {
	opts, addr, err := s.grpcOpts()
	if err != nil {
		return nil, err
	}
	tun, err := kclient.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), addr, opts...)
	if err != nil {
		return nil, err
	}
	c, err := tun.DialContext(ctx, "tcp", target)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ReusableTunnel opens konnectivity-client's reusable tunnel
// (CreateGRPCTunnel): one gRPC connection, one stream per dial.
func (s *Server) ReusableTunnel(ctx context.Context) (kclient.ReusableTunnel, error) {
	opts, addr, err := s.grpcOpts()
	if err != nil {
		return nil, err
	}
	return kclient.CreateGRPCTunnel(ctx, addr, opts...)
}

// Dial dials through whichever frontend s serves.
func (s *Server) Dial(ctx context.Context, target string) (net.Conn, error) {
	if s.Opts.Mode == HTTPConnect {
		return s.DialConnect(ctx, target)
	}
	return s.DialGRPC(ctx, target)
}
