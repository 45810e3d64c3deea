package native

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tlsPair returns server and client TLS configs for 127.0.0.1 offering ALPN.
func tlsPair(t *testing.T) (*tls.Config, *tls.Config) { return linktest.TLS(t, ALPN) }

type pair struct {
	server *ServerLink
	agent  *AgentLink
}

// newPair connects an agent link to a server link over TLS on loopback; the
// agent answers with dial. Both run until cleanup.
func newPair(t *testing.T, so ServerOptions, ao AgentOptions, dial link.DialFunc) *pair {
	t.Helper()
	e := connect(t, so, ao, dial)
	return &pair{server: e.server, agent: e.agent}
}

var opts = ServerOptions{ServerID: "s1", ServerCount: 1}

var loopbackDial = linktest.LoopbackDial

// backend serves handle on loopback until cleanup.
func backend(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	return linktest.StartBackend(t, handle).Addr()
}

func dctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
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
