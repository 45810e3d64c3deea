package harness

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// Backend is a TCP server on loopback that a test reaches through the
// tunnel. It tracks its connections so a test can check none leak.
type Backend struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Addr is host:port of the backend.
func (b *Backend) Addr() string { return b.ln.Addr().String() }

// Open is the number of connections the backend has open now.
func (b *Backend) Open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// StartBackend serves handle for every connection on 127.0.0.1 until cleanup;
// a connection is closed when handle returns.
func StartBackend(t testing.TB, handle func(net.Conn)) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{ln: ln, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns[c] = struct{}{}
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
