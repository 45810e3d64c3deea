package native

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"isthmus.dev/tunnel/idle"
	"isthmus.dev/tunnel/link/linktest"
)

// goroutinesIn counts the goroutines whose stacks hold fn.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// eventually polls cond every 10 ms for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i == 1000 {
			t.Fatalf("after 10 s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A quiet native link on package mux holds no receive goroutine at either
// end: once the sweeper finds it idle, each session's socket waits in the
// epoll set. Traffic wakes it (a connection through the tunnel works as
// ever), it goes quiet again the same way, and closing the link leaves no
// wait, no watch and no goroutine behind.
func TestIdleMuxLinkHoldsNoReceiveGoroutine(t *testing.T) {
	if !idle.Supported {
		t.Skip("no epoll set on this system: receive goroutines stay in Go's poller")
	}
	so := opts
	so.Config.Mux = MuxIsthmus
	e := connect(t, so, AgentOptions{Config: Config{Mux: MuxIsthmus}}, loopbackDial)
	echo := backend(t, linktest.Echo)
	receivers := func() int { return goroutinesIn("mux.(*Session).recv(") }
	quiet := func() bool { return receivers() == 0 && idle.Waiting() == 2 }
	eventually(t, "the idle link's receive goroutines did not leave (or its sockets do not wait in the epoll set)", quiet)

	for round := range 3 { // woken, and quiet again, each time
		c, err := e.server.Dial(dctx(t), echo)
		if err != nil {
			t.Fatalf("round %d: dial through an idle link: %v", round, err)
		}
		msg := bytes.Repeat([]byte{byte('a' + round)}, 100<<10) // several frames and TLS records
		go func() { _, _ = c.Write(msg) }()
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("round %d: echo through a woken link: %v", round, err)
		}
		c.Close()
		eventually(t, "the link did not go quiet again after a connection", quiet)
	}

	e.close()
	eventually(t, "a closed link left waits, watches or receive goroutines", func() bool {
		return receivers() == 0 && idle.Waiting() == 0 && idle.Watched() == 0
	})
}

// holdConn passes writes through, or, while held, keeps them: the test
// then writes them to the socket itself, in pieces.
type holdConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	kept []byte
}

func (h *holdConn) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hold {
		h.kept = append(h.kept, p...)
		return len(p), nil
	}
	return h.Conn.Write(p)
}

// A RawConn under TLS with idle reading: a read allowed to leave returns
// idle.ErrIdle once the sweeper finds the socket idle, even with half a
// TLS record fetched, and TLS keeps that half; the socket then waits in
// the epoll set, the rest of the record resumes the reader, and the read
// gives the whole message. A read not allowed to leave waits on through
// sweeps. Close resumes a reader left waiting, and it finds the
// connection closed.
func TestRawConnIdleReadsKeepTLSState(t *testing.T) {
	if !idle.Supported {
		t.Skip("no epoll set on this system")
	}
	st, ct := linktest.TLS(t, ALPN)
	c, s := tcpPair(t)
	raw := WrapRaw(s)
	if !raw.EnableIdle() {
		t.Fatal("EnableIdle refused a TCP connection")
	}
	server := tls.Server(raw, st)
	hc := &holdConn{Conn: c}
	client := tls.Client(hc, ct)
	hs := make(chan error, 1)
	go func() { hs <- client.Handshake() }()
	if err := server.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	defer server.Close()
	waiting := raw.idle.Parked

	// Not allowed to leave: waits through several sweeps.
	raw.ReadIdle(false)
	got := make(chan string, 1)
	go func() {
		b := make([]byte, 64)
		n, err := server.Read(b)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(b[:n])
	}()
	time.Sleep(4 * idle.SweepPeriod)
	if _, err := client.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g != "first" {
		t.Fatalf("a read not allowed to leave returned %q, want %q", g, "first")
	}

	// Allowed to leave, with half a record fetched.
	hc.mu.Lock()
	hc.hold = true
	hc.mu.Unlock()
	if _, err := client.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	hc.mu.Lock()
	record := hc.kept
	hc.hold, hc.kept = false, nil
	hc.mu.Unlock()
	half := len(record) / 2
	if _, err := c.Write(record[:half]); err != nil {
		t.Fatal(err)
	}
	raw.ReadIdle(true)
	b := make([]byte, 64)
	n, err := server.Read(b)
	if n != 0 || !errors.Is(err, idle.ErrIdle) {
		t.Fatalf("a read allowed to leave an idle socket returned %d, %v; want 0, idle.ErrIdle", n, err)
	}
	resumed := make(chan struct{}, 1)
	parked, err := raw.WaitReadable(func() { resumed <- struct{}{} })
	if !parked || err != nil {
		t.Fatalf("WaitReadable: parked %v, %v", parked, err)
	}
	if !waiting() || idle.Waiting() != 1 {
		t.Fatalf("after WaitReadable: waiting %v, %d sockets in the epoll set", waiting(), idle.Waiting())
	}
	select {
	case <-resumed:
		t.Fatal("resumed with nothing more on the socket")
	case <-time.After(2 * idle.SweepPeriod):
	}
	if _, err := c.Write(record[half:]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-resumed:
	case <-time.After(10 * time.Second):
		t.Fatal("the rest of the record did not resume the reader")
	}
	raw.ReadIdle(false)
	n, err = server.Read(b)
	if err != nil || string(b[:n]) != "second" {
		t.Fatalf("after resuming, read %q, %v; want %q: TLS lost the half record", b[:n], err, "second")
	}

	// Close resumes a reader left waiting; it finds the connection closed.
	raw.ReadIdle(true)
	if n, err := server.Read(b); n != 0 || !errors.Is(err, idle.ErrIdle) {
		t.Fatalf("idle again: read returned %d, %v", n, err)
	}
	if parked, err := raw.WaitReadable(func() { resumed <- struct{}{} }); !parked || err != nil {
		t.Fatalf("WaitReadable: parked %v, %v", parked, err)
	}
	raw.ReadIdle(false)
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-resumed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not resume the reader waiting in the epoll set")
	}
	if _, err := server.Read(b); err == nil {
		t.Fatal("a read after Close succeeded")
	}
	if idle.Waiting() != 0 || idle.Watched() != 0 {
		t.Fatalf("after Close: %d sockets wait, %d watched", idle.Waiting(), idle.Watched())
	}
}

// ServerLink.Start serves the link as Run does, returning at once: the
// agent's drain is heard, connections work, and done gets the reason the
// link ended. On package mux, an idle link then holds no goroutine at the
// server at all: neither a control reader nor a receive loop.
func TestServerLinkStart(t *testing.T) {
	for _, m := range []string{MuxYamux, MuxIsthmus} {
		t.Run(m, func(t *testing.T) {
			so := opts
			so.Config.Mux = m
			done := make(chan error, 1)
			e := connectLinks(t, so, AgentOptions{Config: Config{Mux: m}}, loopbackDial, done)
			echo := backend(t, linktest.Echo)
			controlReaders := func() int { return goroutinesIn("native.(*session).start") + goroutinesIn("(*ServerLink).Run") }
			if m == MuxIsthmus && idle.Supported {
				eventually(t, "an idle link started by Start holds a goroutine at the server", func() bool {
					return controlReaders() == 0 && goroutinesIn("mux.(*Session).recv(") == 0
				})
			}
			c, err := e.server.Dial(dctx(t), echo)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 5)
			if _, err := io.ReadFull(c, b); err != nil || string(b) != "hello" {
				t.Fatalf("echo: %q, %v", b, err)
			}
			c.Close()
			if err := e.agent.Drain(); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the server did not hear the agent's drain", e.server.Draining)
			select {
			case err := <-done:
				t.Fatalf("done called (%v) while the link runs", err)
			default:
			}
			e.close()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("done got %v, want context.Canceled (the link's context ended)", err)
				}
			default:
				t.Fatal("done not called once the link ended")
			}
		})
	}
}
