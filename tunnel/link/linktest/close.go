package linktest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/tunnel/link"
)

// testCloseClientFirst: the client closes an idle connection; the backend
// reads a clean EOF and nothing is left.
func testCloseClientFirst(t *testing.T, l Link) {
	p := l.New(t, Options{})
	serve(t, p, LoopbackDial)
	ended := make(chan error, 1)
	b := StartBackend(t, func(c net.Conn) {
		_, err := io.Copy(c, c)
		ended <- err
	})
	c := dial(t, p, b.Addr())
	roundTrip(t, c, "ping")
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := await(t, ended, "the backend to see the client's close"); err != nil {
		t.Fatalf("the backend's read ended with %v; want a clean EOF", err)
	}
	noLeftovers(t, p, b)
}

// testCloseMidDownload: the client closes while the backend is still
// sending; the backend's writes fail and its connection is closed.
func testCloseMidDownload(t *testing.T, l Link) {
	p := l.New(t, Options{})
	serve(t, p, LoopbackDial)
	stopped := make(chan error, 1)
	b := StartBackend(t, func(c net.Conn) {
		chunk := bytes.Repeat([]byte{'d'}, 64<<10)
		for range 1 << 16 { // 4 GiB at most: the client closes long before
			if _, err := c.Write(chunk); err != nil {
				stopped <- err
				return
			}
		}
		stopped <- nil
	})
	c := dial(t, p, b.Addr())
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if err := await(t, stopped, "the backend's writes to fail after the client's close"); err == nil {
		t.Fatal("the backend wrote 4 GiB to a closed connection")
	}
	noLeftovers(t, p, b)
}

// testCloseAfterWrite: the client writes and closes at once; what it wrote
// before Close reaches the backend whole, then a clean EOF.
func testCloseAfterWrite(t *testing.T, l Link) {
	const size = 256 << 10
	p := l.New(t, Options{})
	serve(t, p, LoopbackDial)
	type got struct {
		data []byte
		err  error
	}
	sink := make(chan got, 1)
	b := StartBackend(t, func(c net.Conn) {
		data, err := io.ReadAll(c)
		sink <- got{data, err}
	})
	data := bytes.Repeat([]byte("written before close "), size/21)
	c := dial(t, p, b.Addr())
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if g := await(t, sink, "the backend to see the client's close"); g.err != nil || !bytes.Equal(g.data, data) {
		t.Fatalf("the backend read %d of %d bytes (equal: %v), then %v; want every byte, then EOF",
			len(g.data), len(data), bytes.Equal(g.data, data), g.err)
	}
	noLeftovers(t, p, b)
}

// testCloseBackendFirst: the backend sends an odd-sized answer and closes;
// the client reads all of it, then a clean EOF.
func testCloseBackendFirst(t *testing.T, l Link) {
	const size = 100003
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	p := l.New(t, Options{})
	serve(t, p, LoopbackDial)
	b := StartBackend(t, func(c net.Conn) { _, _ = c.Write(data) })
	c := dial(t, p, b.Addr())
	got, err := readAll(c, 20*time.Second)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d of %d bytes, then %v; want every byte, then EOF", len(got), size, err)
	}
	_ = c.Close()
	noLeftovers(t, p, b)
}

// testCloseBoth: client and backend close at the same moment, many times:
// whichever order the closes cross in, nothing hangs and nothing is left.
func testCloseBoth(t *testing.T, l Link) {
	const rounds = 20
	p := l.New(t, Options{})
	serve(t, p, LoopbackDial)
	closeNow := make(chan struct{}, rounds)
	b := StartBackend(t, func(c net.Conn) {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err == nil {
			_, _ = c.Write(buf)
		}
		<-closeNow
	})
	for range rounds {
		c := dial(t, p, b.Addr())
		roundTrip(t, c, "both")
		closeNow <- struct{}{}
		_ = c.Close()
	}
	noLeftovers(t, p, b)
}

// testAbortBackend: the backend resets its connection after some data;
// the client reads the data, then an error: a cut stream is never a clean
// EOF.
func testAbortBackend(t *testing.T, l Link) {
	p := l.New(t, Options{})
	serve(t, p, LoopbackDial)
	data := bytes.Repeat([]byte{'p'}, 64<<10)
	seen := make(chan struct{})
	b := StartBackend(t, func(c net.Conn) {
		_, _ = c.Write(data)
		select {
		case <-seen:
		case <-time.After(20 * time.Second):
		}
		_ = c.(linger).SetLinger(0)
	})
	c := dial(t, p, b.Addr())
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, len(data))); err != nil {
		t.Fatal(err)
	}
	close(seen)
	rest, err := readAll(c, 20*time.Second)
	switch {
	case err == nil:
		t.Fatalf("the backend's reset reached the client as a clean EOF (after %d more bytes)", len(rest))
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatal("the backend's reset never reached the client")
	case !errors.Is(err, link.ErrAborted):
		t.Fatalf("the client's read after the backend's reset: %v; want link.ErrAborted", err)
	}
	t.Logf("the client's read after the backend's reset: %v", err)
	_ = c.Close()
	noLeftovers(t, p, b)
}

// testAbortClient: the server end cuts a connection (SetLinger(0), then
// Close, as a splice does when its client was reset). Where the link
// carries cuts, the backend sees a reset; where it cannot (ANP), a plain
// close.
func testAbortClient(t *testing.T, l Link) {
	p := l.New(t, Options{})
	serve(t, p, LoopbackDial)
	read := make(chan struct{})
	ended := make(chan error, 1)
	b := StartBackend(t, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			ended <- err
			return
		}
		close(read)
		_, err := c.Read(make([]byte, 64))
		if err == nil {
			err = errors.New("the backend read bytes the client never wrote")
		}
		ended <- err
	})
	c := dial(t, p, b.Addr())
	if _, err := c.Write([]byte("half")); err != nil {
		t.Fatal(err)
	}
	await(t, read, "the backend to get the client's bytes")
	lc, ok := c.(linger)
	if !ok && l.Caps.CutToAgent {
		t.Fatal("the connection has no SetLinger: the server end cannot cut it")
	}
	if ok {
		if err := lc.SetLinger(0); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.Close()
	err := await(t, ended, "the backend to see the end of the connection")
	switch {
	case l.Caps.CutToAgent && !errors.Is(err, syscall.ECONNRESET):
		t.Fatalf("the backend's read after the client's cut: %v; want a reset", err)
	case !l.Caps.CutToAgent && err != io.EOF:
		t.Fatalf("the backend's read after the client's cut: %v; want EOF (the link cannot carry a cut to the agent)", err)
	}
	noLeftovers(t, p, b)
}

// roundTrip writes msg and reads it back.
func roundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if err := echoRoundTrip(c, msg); err != nil {
		t.Fatal(err)
	}
}

// echoRoundTrip writes msg and reads it back, bounded by 20 s.
func echoRoundTrip(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo of %q: %w", msg, err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo of %q: %q", msg, got)
	}
	return nil
}
