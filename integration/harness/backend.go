package harness

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// Backend is a TCP server on loopback that a test reaches through the
// tunnel. It tracks its connections so a test can check none leak.
type Backend struct {
	ln       net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	accepted int
	peers    []netip.Addr // of every connection accepted, in order
}

// Addr is host:port of the backend.
func (b *Backend) Addr() string { return b.ln.Addr().String() }

// Open is the number of connections the backend has open now.
func (b *Backend) Open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// Accepted is the number of connections the backend has accepted so far.
func (b *Backend) Accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepted
}

// Peers are the addresses the accepted connections came from, in order
// (Peers()[n:] are those since Accepted() was n).
func (b *Backend) Peers() []netip.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]netip.Addr(nil), b.peers...)
}

// StartBackend serves handle for every connection on 127.0.0.1 until cleanup;
// a connection is closed when handle returns.
func StartBackend(t testing.TB, handle func(net.Conn)) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ServeBackend(t, ln, handle)
}

// ServeBackend is StartBackend on a listener of the test's (one in a
// namespace, say); it closes ln at cleanup.
func ServeBackend(t testing.TB, ln net.Listener, handle func(net.Conn)) *Backend {
	t.Helper()
	b := &Backend{ln: ln, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peer, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			b.mu.Lock()
			b.conns[c] = struct{}{}
			b.accepted++
			b.peers = append(b.peers, peer.Addr().Unmap())
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer func() {
					b.mu.Lock()
					delete(b.conns, c)
					b.mu.Unlock()
					c.Close()
				}()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

// Echo copies everything back until EOF, then closes.
func Echo(c net.Conn) {
	_, err := io.Copy(c, c)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return
	}
}

// CheckEcho sends msg on c, a connection to an Echo backend, and fails t
// unless msg comes back whole within 10 s.
func CheckEcho(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("echo %q: write: %v", msg, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, got, err)
	}
}

// DialEcho dials target (an Echo backend) through s, checks one echo of
// msg and closes.
func (s *Server) DialEcho(t testing.TB, target, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := s.Dial(ctx, target)
	if err != nil {
		t.Fatalf("dial %s through %s: %v", target, s.Name, err)
	}
	defer c.Close()
	CheckEcho(t, c, msg)
}
