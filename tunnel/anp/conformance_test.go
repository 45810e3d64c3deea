package anp

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
)

// The link conformance suite over the ANP link: a gRPC stream over TLS on
// loopback. The ANP wire has neither half-close nor flow control, and its
// CLOSE_REQ cannot say a connection was cut.
func TestConformance(t *testing.T) {
	linktest.Run(t, linktest.Link{
		Name: "anp",
		Caps: linktest.Caps{},
		New: func(t testing.TB, o linktest.Options) *linktest.Pair {
			obs := &countingObserver{}
			e := connect(t,
				ServerOptions{AgentID: "agent-1", QueueBytes: o.QueueBytes, StallTimeout: o.StallTimeout, Observer: obs},
				AgentOptions{QueueBytes: o.QueueBytes, StallTimeout: o.StallTimeout}, nil)
			return &linktest.Pair{
				Server: e.server, Agent: e.agent,
				ServerActive: e.server.Active, AgentActive: e.agent.Active,
				ServerDone: e.server.Done(),
				Cut:        e.cut, Close: e.close,
				Stalls: func() int { return int(obs.stalled.Load()) },
			}
		},
	})
}

// countingObserver counts what an Observer is told.
type countingObserver struct {
	sent, received, errors, stalled atomic.Int64
}

func (o *countingObserver) Packet(sent bool, _ client.PacketType) {
	if sent {
		o.sent.Add(1)
	} else {
		o.received.Add(1)
	}
}
func (o *countingObserver) StreamError(bool, client.PacketType, error) { o.errors.Add(1) }
func (o *countingObserver) Stalled()                                   { o.stalled.Add(1) }

type testService struct {
	opts  ServerOptions
	links chan *ServerLink
}

func (s *testService) Connect(stream grpc.BidiStreamingServer[client.Packet, client.Packet]) error {
	l := NewServerLink(stream, s.opts)
	s.links <- l
	return l.Run(stream.Context())
}

// ends are a connected server link and agent link, both running.
type ends struct {
	server *ServerLink
	agent  *AgentLink
	mu     sync.Mutex
	raw    []net.Conn // the agent's TCP connections, under gRPC's TLS
	close  func()     // ends both links and waits for them; idempotent
}

// cut resets the agent's TCP connections: the link is lost with no
// goodbye.
func (e *ends) cut() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.raw {
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	}
}

// connect starts a gRPC server over TLS with one ServerLink and connects
// an AgentLink, and runs both (and, if dial is set, the plain agent serve
// loop) until close or the test's cleanup.
func connect(t testing.TB, so ServerOptions, ao AgentOptions, dial link.DialFunc) *ends {
	t.Helper()
	st, ct := linktest.TLS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := &testService{opts: so, links: make(chan *ServerLink, 1)}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(st)))
	gs.RegisterService(&AgentServiceDesc, svc)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(ln) }()

	e := &ends{}
	rawDial := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := linktest.LoopbackDial(ctx, addr)
		if err == nil {
			e.mu.Lock()
			e.raw = append(e.raw, c)
			e.mu.Unlock()
		}
		return c, err
	}
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(ct)), grpc.WithContextDialer(rawDial))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	e.close = sync.OnceFunc(func() {
		cancel()
		wg.Wait()
		cc.Close()
		gs.Stop()
		<-served
	})
	t.Cleanup(e.close)
	stream, err := OpenAgentStream(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	e.agent = NewAgentLink(stream, ao)
	wg.Add(1)
	go func() { defer wg.Done(); _ = e.agent.Run(ctx) }()
	if dial != nil {
		wg.Add(1)
		go func() { defer wg.Done(); linktest.Serve(ctx, e.agent, dial) }()
	}
	select {
	case e.server = <-svc.links:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent's stream never reached the server")
	}
	return e
}
