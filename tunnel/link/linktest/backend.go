package linktest

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Backend is a TCP server on loopback, the far end of tunneled
// connections. It runs handle for each connection and closes the
// connection when handle returns; everything ends at the test's cleanup.
type Backend struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartBackend serves handle on a loopback port until t's cleanup.
func StartBackend(t testing.TB, handle func(net.Conn)) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{ln: ln, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.accept(handle)
	t.Cleanup(b.close)
	return b
}

func (b *Backend) accept(handle func(net.Conn)) {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			handle(c)
			_ = c.Close()
			b.mu.Lock()
			delete(b.conns, c)
			b.mu.Unlock()
		}()
	}
}

func (b *Backend) close() {
	_ = b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		_ = c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// Addr is the backend's host:port.
func (b *Backend) Addr() string { return b.ln.Addr().String() }

// Open is how many connections the backend holds (their handler has not
// returned).
func (b *Backend) Open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// Echo sends back what it reads until EOF.
func Echo(c net.Conn) { _, _ = io.Copy(c, c) }

// closedPort is a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// unanswered is a loopback address whose SYNs go unanswered, so a dial to
// it waits until its context ends: a listener with a backlog of 0 that
// never accepts, its accept queue filled (the kernel then drops further
// SYNs). Nothing leaves loopback, and no privilege is needed.
func unanswered(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "unanswered")
	t.Cleanup(func() { _ = f.Close() })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	for range 8 { // fill the accept queue: a dial that times out found it full
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return addr
			}
			t.Fatalf("filling the accept queue of %s: %v", addr, err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	t.Fatalf("the accept queue of %s never filled", addr)
	return ""
}

// dialIsolated dials address from a network namespace made for this one
// dial (root only): it has no interface up and no route, so the dial fails
// with "network is unreachable" and no packet is sent. The namespace
// belongs to one locked OS thread and ends with it.
func dialIsolated(ctx context.Context, address string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	res := make(chan result, 1)
	go func() {
		// Never unlocked: the runtime ends the thread, and the namespace
		// with it, when this goroutine returns.
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			res <- result{nil, err}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", address)
		res <- result{c, err}
	}()
	r := <-res
	return r.c, r.err
}
