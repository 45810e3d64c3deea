package anp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair is a server link and an agent link joined by a real gRPC stream on
// loopback TCP.
type pair struct {
	server *ServerLink
	agent  *AgentLink
}

type testService struct {
	opts  ServerOptions
	links chan *ServerLink
}

func (s *testService) Connect(stream grpc.BidiStreamingServer[client.Packet, client.Packet]) error {
	l := NewServerLink(stream, s.opts)
	s.links <- l
	return l.Run(stream.Context())
}

// newPair starts a gRPC server with one ServerLink and connects an
// AgentLink that dials with dial. Everything stops at test cleanup.
func newPair(t *testing.T, so ServerOptions, ao AgentOptions, dial link.DialFunc) *pair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := &testService{opts: so, links: make(chan *ServerLink, 1)}
	gs := grpc.NewServer()
	gs.RegisterService(&AgentServiceDesc, svc)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(ln) }()

	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := OpenAgentStream(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	al := NewAgentLink(stream, ao)
	agentDone := serveAgent(ctx, al, dial)
	var sl *ServerLink
	select {
	case sl = <-svc.links:
	case <-time.After(10 * time.Second):
		t.Fatal("agent stream never reached the server")
	}
	t.Cleanup(func() {
		cancel()
		<-agentDone
		cc.Close()
		gs.Stop()
		<-served
	})
	return &pair{server: sl, agent: al}
}

// serveAgent runs al and answers its requests with dial; the channel closes
// when both have ended.
func serveAgent(ctx context.Context, al *AgentLink, dial link.DialFunc) <-chan struct{} {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = al.Run(ctx) }()
	go func() { defer wg.Done(); linktest.Serve(ctx, al, dial) }()
	go func() { wg.Wait(); close(done) }()
	return done
}

func loopbackDial(ctx context.Context, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", address)
}

// echoServer echoes on loopback until cleanup and reports how many
// connections are open.
func echoServer(t *testing.T) (addr string, open func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	var wg sync.WaitGroup
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				c.Close()
				mu.Lock()
				n--
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func dialCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDialEchoAndClientClose(t *testing.T) {
	addr, open := echoServer(t)
	p := newPair(t, ServerOptions{}, AgentOptions{}, loopbackDial)
	c, err := p.server.Dial(dialCtx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 40000) // 640 KB: several DATA packets
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
	if n := p.server.Active(); n != 1 {
		t.Fatalf("server link: %d active connections, want 1", n)
	}
	c.Close()
	waitFor(t, "backend connection closed after client close", func() bool { return open() == 0 })
	waitFor(t, "links forget the connection", func() bool { return p.server.Active() == 0 && p.agent.Active() == 0 })
}

func TestBackendClosesFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("bye"))
		c.Close()
	}()
	p := newPair(t, ServerOptions{}, AgentOptions{}, loopbackDial)
	c, err := p.server.Dial(dialCtx(t), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after backend close: %v (want clean EOF)", err)
	}
	if string(got) != "bye" {
		t.Fatalf("got %q, want %q", got, "bye")
	}
	waitFor(t, "links forget the connection", func() bool { return p.server.Active() == 0 && p.agent.Active() == 0 })
}

func TestDialFailureCarriesReason(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	p := newPair(t, ServerOptions{AgentID: "a1"}, AgentOptions{}, loopbackDial)
	_, err = p.server.Dial(dialCtx(t), closed)
	var de *link.DialError
	if !errors.As(err, &de) || de.Reason != link.ReasonRefused || de.Agent != "a1" {
		t.Fatalf("dial to closed port: %v; want a DialError with reason refused via agent a1", err)
	}
}

// A dial the server gives up on is cancelled on the agent (DIAL_CLS): the
// agent's dial context ends and nothing stays open.
func TestCancelledDialReachesAgent(t *testing.T) {
	started := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	hang := func(ctx context.Context, _ string) (net.Conn, error) {
		started <- struct{}{}
		<-ctx.Done()
		cancelled <- struct{}{}
		return nil, ctx.Err()
	}
	p := newPair(t, ServerOptions{}, AgentOptions{}, hang)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := p.server.Dial(ctx, "127.0.0.1:9") // never dialed: the dial func above only waits
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("agent never started the dial")
	}
	cancel()
	if err := <-errc; link.ReasonOf(err) != link.ReasonCancelled {
		t.Fatalf("cancelled dial: %v, want reason cancelled", err)
	}
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("DIAL_CLS did not cancel the agent's dial")
	}
	waitFor(t, "no connection left", func() bool { return p.server.Active() == 0 && p.agent.Active() == 0 })
}

// A connection whose reader stalls overflows its own queue and is closed
// alone; another connection on the same link keeps working.
func TestQueueOverflowClosesOnlyThatConnection(t *testing.T) {
	addr, _ := echoServer(t)
	obs := &countingObserver{}
	p := newPair(t, ServerOptions{QueueBytes: 64 << 10, Observer: obs}, AgentOptions{}, loopbackDial)
	stalled, err := p.server.Dial(dialCtx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	other, err := p.server.Dial(dialCtx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// 1 MiB echoed back into a 64 KiB queue nobody reads.
	go func() { _, _ = stalled.Write(make([]byte, 1<<20)) }()
	waitFor(t, "the stalled connection to be closed", func() bool { return p.server.Active() == 1 })
	buf := make([]byte, 1<<20)
	_, err = io.ReadFull(stalled, buf)
	if !errors.Is(err, link.ErrQueueOverflow) {
		t.Fatalf("stalled reader: %v, want ErrQueueOverflow", err)
	}
	if _, err := other.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("still here"))
	if _, err := io.ReadFull(other, got); err != nil || string(got) != "still here" {
		t.Fatalf("other connection: %q, %v", got, err)
	}
	if n := obs.stalled.Load(); n != 1 {
		t.Fatalf("the observer saw %d stalled connections; want 1", n)
	}
	if obs.packets.Load() == 0 {
		t.Fatal("the observer saw no packet")
	}
}

// countingObserver counts what an Observer is told.
type countingObserver struct {
	packets, errors, stalled atomic.Int64
}

func (o *countingObserver) Packet(bool, client.PacketType)             { o.packets.Add(1) }
func (o *countingObserver) StreamError(bool, client.PacketType, error) { o.errors.Add(1) }
func (o *countingObserver) Stalled()                                   { o.stalled.Add(1) }

// When the link ends, open connections fail and new dials fail fast.
func TestLinkEndFailsConnections(t *testing.T) {
	addr, open := echoServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := &testService{links: make(chan *ServerLink, 1)}
	gs := grpc.NewServer()
	gs.RegisterService(&AgentServiceDesc, svc)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(ln) }()
	defer func() { gs.Stop(); <-served }()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := OpenAgentStream(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	al := NewAgentLink(stream, AgentOptions{})
	agentDone := serveAgent(ctx, al, loopbackDial)
	sl := <-svc.links
	c, err := sl.Dial(dialCtx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel() // the agent goes away
	<-agentDone
	if open() != 0 {
		waitFor(t, "the agent to close its backend connections", func() bool { return open() == 0 })
	}
	if _, err := io.ReadAll(c); !errors.Is(err, link.ErrLinkClosed) {
		t.Fatalf("read on a connection of a dead link: %v, want ErrLinkClosed", err)
	}
	<-sl.Done()
	if _, err := sl.Dial(dialCtx(t), addr); link.ReasonOf(err) != link.ReasonLinkClosed {
		t.Fatalf("dial on a dead link: %v, want reason link_closed", err)
	}
}

// A reader slower than its sender, but reading, is throttled, not cut:
// every byte arrives through a queue far smaller than the stream.
func TestSlowReaderIsThrottledNotCut(t *testing.T) {
	addr, _ := echoServer(t)
	// The stall timeout is far above the reader's pace even on a loaded
	// machine: what is tested is that steady progress is never cut.
	p := newPair(t, ServerOptions{QueueBytes: 64 << 10, StallTimeout: 5 * time.Second}, AgentOptions{}, loopbackDial)
	c, err := p.server.Dial(dialCtx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const total = 2 << 20
	msg := bytes.Repeat([]byte("slow reader "), total/12)
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, 0, len(msg))
	buf := make([]byte, 16<<10)
	for len(got) < len(msg) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(got), len(msg), err)
		}
		got = append(got, buf[:n]...)
		time.Sleep(time.Millisecond) // slower than the echo, never stalled
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("data differs")
	}
}
