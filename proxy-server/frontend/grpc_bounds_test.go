package frontend

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/limits"
)

// serveGRPC serves g on a Unix socket with the peer credentials the
// server uses there, and returns a client connection to it.
func serveGRPC(t *testing.T, g *GRPC) (*grpc.ClientConn, *bounded) {
	t.Helper()
	b := &bounded{reg: prometheus.NewRegistry(), logs: &syncLog{}}
	g.Log = slog.New(slog.NewTextHandler(b.logs, nil))
	var err error
	if g.Limits, err = limits.New(limits.Config{Registerer: b.reg, Subsystem: "server", Limits: limits.ServerLimits, Log: g.Log}); err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/grpc.sock"
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(UnixPeerCreds()))
	g.Register(s)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	cc, err := grpc.NewClient("passthrough:///"+path, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); s.Stop(); <-done })
	return cc, b
}

// dialRsp opens a Proxy stream, sends DIAL_REQ for address, and returns
// the DIAL_RSP (and the stream, to keep it open).
func dialRsp(t *testing.T, cc *grpc.ClientConn, address string) (*client.DialResponse, client.ProxyService_ProxyClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	st, err := client.NewProxyServiceClient(cc).Proxy(ctx)
	if err != nil {
		t.Error(err)
		return nil, nil
	}
	if err := st.Send(&client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
		DialRequest: &client.DialRequest{Protocol: "tcp", Address: address, Random: 1}}}); err != nil {
		t.Error(err)
		return nil, nil
	}
	p, err := st.Recv()
	if err != nil {
		t.Error(err)
		return nil, nil
	}
	return p.GetDialResponse(), st
}

// Over the Unix socket every stream of one process is one client, however
// many connections it opens: its dials beyond the bound are refused at
// once; the waiting ones go through. A target longer than any host:port is
// refused without being echoed.
func TestGRPCPendingDialsPerClient(t *testing.T) {
	echo := echoBackend(t)
	d := &gatedDialer{gate: make(chan struct{})}
	cc, b := serveGRPC(t, &GRPC{Dialer: d, MaxPendingPerClient: 2})
	cc2 := secondClient(t, cc) // a second connection of the same process
	type result struct {
		rsp *client.DialResponse
	}
	held := make(chan result, 2)
	for _, c := range []*grpc.ClientConn{cc, cc2} {
		go func() { r, _ := dialRsp(t, c, echo); held <- result{r} }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.started.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the two dials never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	rsp, _ := dialRsp(t, cc, echo)
	if rsp.GetConnectID() != 0 || !strings.Contains(rsp.GetError(), "--max-pending-dials-per-client") {
		t.Fatalf("third dial: %v; want an error naming the flag", rsp)
	}
	if n := b.count(limits.PendingDialsClient); n != 1 {
		t.Fatalf("pending_dials_client hits %v, want 1", n)
	}
	if logs := b.logs.String(); !strings.Contains(logs, "client=\"pid ") {
		t.Fatalf("the log line does not name the client process:\n%s", logs)
	}
	close(d.gate)
	for range 2 {
		if r := <-held; r.rsp.GetConnectID() == 0 {
			t.Fatalf("a dial within the bound failed: %v", r.rsp)
		}
	}
	long := strings.Repeat("ECHOMARKER", 200) + ":443"
	rsp, _ = dialRsp(t, cc, long)
	if rsp.GetConnectID() != 0 || strings.Contains(rsp.GetError(), "ECHOMARKER") || !strings.Contains(rsp.GetError(), "longer than any host:port") {
		t.Fatalf("long target: %v; want a refusal that does not echo it", rsp)
	}
}

// secondClient opens another client connection to cc's socket.
func secondClient(t *testing.T, cc *grpc.ClientConn) *grpc.ClientConn {
	t.Helper()
	path := strings.TrimPrefix(cc.Target(), "passthrough:///")
	c, err := grpc.NewClient(cc.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
