package linktest

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// halfCloser is a connection whose write side closes alone.
type halfCloser interface{ CloseWrite() error }

// linger is a connection whose next Close can be made abortive.
type linger interface{ SetLinger(sec int) error }

// testEcho: several connections at once each send bulk data to an echo
// backend while reading the echo, and get every byte back; then nothing
// is left at either end or at the backend.
func testEcho(t *testing.T, l Link) {
	const conns, size = 4, 2 << 20
	p := l.New(t, Options{})
	echo := StartBackend(t, Echo)
	serve(t, p, LoopbackDial)
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i] = dial(t, p, echo.Addr())
	}
	if n := p.ServerActive(); n != conns {
		t.Fatalf("the server end counts %d connections, want %d", n, conns)
	}
	waitFor(t, "the agent end to count every connection", func() bool { return p.AgentActive() == conns })
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echoOnce(c, size, l.Caps.HalfClose); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	noLeftovers(t, p, echo)
}

// echoOnce writes size random bytes in chunks of many sizes while reading
// the echo, checks it, and ends the connection: with a half-close and the
// backend's EOF where the link has it, else with Close.
func echoOnce(c net.Conn, size int, halfClose bool) error {
	data := make([]byte, size)
	_, _ = rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		var err error
		for off, n := 0, 1; off < size && err == nil; off, n = off+n, n*3%(64<<10)+1 {
			_, err = c.Write(data[off:min(off+n, size)])
		}
		if err == nil && halfClose {
			err = c.(halfCloser).CloseWrite()
		}
		werr <- err
	}()
	got := make([]byte, size)
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if !bytes.Equal(got, data) {
		return errors.New("the echo differs from what was sent")
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if halfClose {
		if rest, err := readAll(c, 20*time.Second); err != nil || len(rest) != 0 {
			return fmt.Errorf("after the half-close: %d more bytes, %v; want the backend's EOF", len(rest), err)
		}
	}
	return c.Close()
}

// testHalfClose checks what EOF means on the link. With half-close, either
// side's CloseWrite ends one direction and the other goes on. Without it,
// the tunneled connection has no CloseWrite, and the backend's EOF ends the
// whole connection: the client reads the data, then EOF, and its writes
// fail.
func testHalfClose(t *testing.T, l Link) {
	p := l.New(t, Options{})
	serve(t, p, LoopbackDial)
	if !l.Caps.HalfClose {
		testNoHalfClose(t, p)
		return
	}
	answer := StartBackend(t, func(c net.Conn) {
		got, _ := io.ReadAll(c)
		_, _ = fmt.Fprintf(c, "got %q", got)
	})
	c := dial(t, p, answer.Addr())
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.(halfCloser).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(c, 20*time.Second); err != nil || string(got) != `got "request"` {
		t.Fatalf("after the client's half-close: %q, %v; want the answer, then EOF", got, err)
	}

	heard := make(chan []byte, 1)
	speaker := StartBackend(t, func(c net.Conn) {
		_, _ = c.Write([]byte("hello"))
		_ = c.(halfCloser).CloseWrite()
		got, _ := io.ReadAll(c)
		heard <- got
	})
	c2 := dial(t, p, speaker.Addr())
	if got, err := readAll(c2, 20*time.Second); err != nil || string(got) != "hello" {
		t.Fatalf("backend's half-close: %q, %v; want hello, then EOF", got, err)
	}
	if _, err := c2.Write([]byte("still open")); err != nil {
		t.Fatalf("writing after the backend's half-close: %v", err)
	}
	if err := c2.(halfCloser).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := <-heard; string(got) != "still open" {
		t.Fatalf("the backend read %q after its half-close; want what the client wrote", got)
	}
	_ = c.Close()
	_ = c2.Close()
	noLeftovers(t, p, answer, speaker)
}

func testNoHalfClose(t *testing.T, p *Pair) {
	backendRead := make(chan error, 1)
	speaker := StartBackend(t, func(c net.Conn) {
		_, _ = c.Write([]byte("hello"))
		_ = c.(halfCloser).CloseWrite()
		n, err := c.Read(make([]byte, 64))
		if err == nil {
			err = fmt.Errorf("read %d bytes", n)
		}
		backendRead <- err
	})
	c := dial(t, p, speaker.Addr())
	if _, ok := c.(halfCloser); ok {
		t.Fatal("the tunneled connection has CloseWrite on a link without half-close")
	}
	if got, err := readAll(c, 20*time.Second); err != nil || string(got) != "hello" {
		t.Fatalf("backend's half-close: %q, %v; want hello, then EOF", got, err)
	}
	if err := <-backendRead; !errors.Is(err, io.EOF) {
		t.Fatalf("the backend's read after its half-close: %v; want EOF (the whole connection ended)", err)
	}
	waitFor(t, "the client's writes to fail", func() bool {
		_, err := c.Write([]byte("x"))
		return err != nil
	})
	_ = c.Close()
	noLeftovers(t, p, speaker)
}
