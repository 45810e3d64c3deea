package native

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
	"isthmus.dev/tunnel/splice"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tlsPair returns server and client TLS configs for 127.0.0.1 offering ALPN.
func tlsPair(t *testing.T) (*tls.Config, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{ALPN}},
		&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{ALPN}}
}

type pair struct {
	server *ServerLink
	agent  *AgentLink
}

// newPair connects an agent link to a server link over TLS on loopback and
// runs both until cleanup.
func newPair(t *testing.T, so ServerOptions, ao AgentOptions, dial link.DialFunc) *pair {
	t.Helper()
	st, ct := tlsPair(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", st)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	type res struct {
		l   *ServerLink
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- res{nil, err}
			return
		}
		l, err := Accept(ctx, c, so)
		accepted <- res{l, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(WrapRaw(raw), ct) // as the agent does: records batched under TLS
	if err := conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != ALPN {
		t.Fatalf("ALPN %q", p)
	}
	al, w, err := Connect(ctx, conn, Hello{AgentID: "agent-1", Identifiers: "host=n1"}, ao)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if w.ServerID != so.ServerID || w.ServerCount != so.ServerCount {
		t.Fatalf("welcome %+v", w)
	}
	r := <-accepted
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = r.l.Run(ctx) }()
	go func() { defer wg.Done(); _ = al.Run(ctx) }()
	go func() { defer wg.Done(); linktest.Serve(ctx, al, dial) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &pair{server: r.l, agent: al}
}

var opts = ServerOptions{ServerID: "s1", ServerCount: 1}

func loopbackDial(ctx context.Context, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", address)
}

// backend serves handle on loopback until cleanup.
func backend(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
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
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); handle(c) }()
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
	return ln.Addr().String()
}

func dctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// An idle tunneled connection holds no copy buffer on the agent (the stream
// is waited on before a buffer is taken), and wakes up when bytes come;
// EOF after idling still travels.
func TestIdleStreamHoldsNoBuffer(t *testing.T) {
	addr := backend(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	p := newPair(t, opts, AgentOptions{}, loopbackDial)
	c, err := p.server.Dial(dctx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	idle := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for splice.HeldBuffers() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d copy buffers held by an idle connection", splice.HeldBuffers())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, n := range []int{1, 4 << 20, 100} {
		idle()
		msg := bytes.Repeat([]byte{'i'}, n)
		go func() { _, _ = c.Write(msg) }()
		got := make([]byte, n)
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes: %v", n, err)
		}
	}
	idle()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after the half-close: %q, %v", rest, err)
	}
}

// The client half-closes; the backend answers after reading EOF.
func TestHalfClose(t *testing.T) {
	addr := backend(t, func(c net.Conn) {
		got, _ := io.ReadAll(c)
		_, _ = c.Write(append([]byte("got:"), got...))
	})
	p := newPair(t, opts, AgentOptions{}, loopbackDial)
	c, err := p.server.Dial(dctx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got:request" {
		t.Fatalf("answer %q, %v", got, err)
	}
}

func TestDialFailureIsTyped(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	p := newPair(t, opts, AgentOptions{}, loopbackDial)
	_, err := p.server.Dial(dctx(t), closed)
	var de *link.DialError
	if !errors.As(err, &de) || de.Reason != link.ReasonRefused || de.Agent != "agent-1" {
		t.Fatalf("%v; want reason refused via agent-1", err)
	}
}

func TestCancelledDialReachesAgent(t *testing.T) {
	started, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
	hang := func(ctx context.Context, _ string) (net.Conn, error) {
		started <- struct{}{}
		<-ctx.Done()
		cancelled <- struct{}{}
		return nil, ctx.Err()
	}
	p := newPair(t, opts, AgentOptions{}, hang)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := p.server.Dial(ctx, "127.0.0.1:9"); errc <- err }()
	<-started
	cancel()
	if err := <-errc; link.ReasonOf(err) != link.ReasonCancelled {
		t.Fatalf("%v, want cancelled", err)
	}
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent's dial was not cancelled")
	}
	for i := 0; p.agent.Active() != 0 || p.server.Active() != 0; i++ {
		if i > 500 {
			t.Fatalf("streams left: agent %d server %d", p.agent.Active(), p.server.Active())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One connection's reader stalls with its window full; another connection
// of the same link keeps its round trips going, and the stalled one gets all
// its data once it reads again.
func TestStalledReaderBlocksNobody(t *testing.T) {
	const flood = 32 << 20
	floodAddr := backend(t, func(c net.Conn) { _, _ = c.Write(bytes.Repeat([]byte{'x'}, flood)) })
	echoAddr := backend(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	p := newPair(t, opts, AgentOptions{}, loopbackDial)
	a, err := p.server.Dial(dctx(t), floodAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := p.server.Dial(dctx(t), echoAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	time.Sleep(100 * time.Millisecond) // let the flood fill a's window
	buf := make([]byte, 8)
	for i := range 200 {
		_ = b.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := b.Write([]byte("ping1234")); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		if _, err := io.ReadFull(b, buf); err != nil {
			t.Fatalf("round trip %d while a is stalled: %v", i, err)
		}
	}
	_ = a.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, a)
	if err != nil || n != flood {
		t.Fatalf("stalled connection resumed: %d of %d bytes, %v", n, flood, err)
	}
}

// Bulk data both ways at once on one connection: flow control that pauses
// one direction never deadlocks the other.
func TestBulkBothWays(t *testing.T) {
	const size = 32 << 20
	addr := backend(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	p := newPair(t, opts, AgentOptions{}, loopbackDial)
	c, err := p.server.Dial(dctx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	_, _ = rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("echo of %d bytes: got %d, %v", size, len(got), err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
}

// Closing a connection whose backend is still sending aborts it on the
// agent: the backend connection is closed, nothing is left behind.
func TestCloseAbortsTheBackend(t *testing.T) {
	backendDone := make(chan error, 1)
	addr := backend(t, func(c net.Conn) {
		chunk := bytes.Repeat([]byte{'y'}, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				backendDone <- err
				return
			}
		}
	})
	p := newPair(t, opts, AgentOptions{}, loopbackDial)
	c, err := p.server.Dial(dctx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-backendDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend kept its connection after the client closed")
	}
	for i := 0; p.agent.Active() != 0; i++ {
		if i > 500 {
			t.Fatalf("agent still has %d streams", p.agent.Active())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRefusedAgent(t *testing.T) {
	st, ct := tlsPair(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", st)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		_, err = Accept(context.Background(), c, ServerOptions{ServerID: "s", ServerCount: 1,
			Check: func(context.Context, Hello) error { return errors.New("bad token") }})
		done <- err
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), ct)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = Connect(context.Background(), conn, Hello{AgentID: "a"}, AgentOptions{})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("agent: %v, want ErrRefused", err)
	}
	if err := <-done; err == nil {
		t.Fatal("server accepted a refused agent")
	}
}

// Garbage on the control stream ends that link only.
func TestGarbageOnControlStream(t *testing.T) {
	echoAddr := backend(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	good := newPair(t, opts, AgentOptions{}, loopbackDial)

	st, ct := tlsPair(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", st)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, garbage := range [][]byte{
		{0xff, 0xff, 0xff, 0xff},                   // a frame far too large
		{0, 0, 0, 3, 'x', 'y', 'z'},                // not JSON
		append([]byte{0, 0, 0, 9}, `{"t":"x"}`...), // not a hello
	} {
		errc := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			_, err = Accept(context.Background(), c, ServerOptions{ServerID: "s", ServerCount: 1,
				Config: Config{HandshakeTimeout: 5 * time.Second}})
			errc <- err
		}()
		conn, err := tls.Dial("tcp", ln.Addr().String(), ct)
		if err != nil {
			t.Fatal(err)
		}
		ys, err := yamux.Client(conn, Config{}.yamux())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ys.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		_, _ = s.Write(garbage)
		if err := <-errc; !errors.Is(err, ErrProtocol) {
			t.Errorf("garbage %q: %v, want ErrProtocol", garbage, err)
		}
		ys.Close()
	}
	// The good link is unaffected.
	c, err := good.server.Dial(dctx(t), echoAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("still")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "still" {
		t.Fatalf("%q %v", got, err)
	}
}

func TestWireConstants(t *testing.T) {
	if ALPN != "isthmus/1" || Version != 1 || dialMagic != 'D' {
		t.Fatal("wire constants changed")
	}
	for code, r := range answerReasons {
		if code > 0 && answerCode(r) != byte(code) {
			t.Errorf("answer code of %s = %d, want %d", r, answerCode(r), code)
		}
	}
}
