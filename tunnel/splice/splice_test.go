package splice

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"isthmus.dev/tunnel/idle"
	"isthmus.dev/tunnel/native/mux"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) { return socketPair(t, "tcp") }

// client <-> [a | splice | b] <-> backend, over real TCP: a half-close
// travels through, and the answer after it still arrives.
func TestHalfCloseTravels(t *testing.T) {
	client, a := tcpPair(t)
	b, backend := tcpPair(t)
	done := make(chan Result, 1)
	go func() { done <- Splice(a, b) }()

	go func() {
		// The backend reads until EOF, then answers and closes.
		got, _ := io.ReadAll(backend)
		_, _ = backend.Write(append([]byte("got:"), got...))
		backend.Close()
	}()
	if _, err := client.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if string(answer) != "got:request" {
		t.Fatalf("answer %q", answer)
	}
	client.Close()
	res := <-done
	if res.AtoB != int64(len("request")) || res.BtoA != int64(len("got:request")) || res.Err != nil {
		t.Fatalf("result %+v", res)
	}
}

// noHalfClose hides CloseWrite, like an ANP tunneled connection.
type noHalfClose struct{ net.Conn }

// With one end unable to half-close, EOF from either side ends both.
func TestEOFWithoutHalfCloseEndsBoth(t *testing.T) {
	client, a := tcpPair(t)
	b, backend := tcpPair(t)
	done := make(chan Result, 1)
	go func() { done <- Splice(a, noHalfClose{b}) }()
	payload := bytes.Repeat([]byte{7}, 300<<10)
	if _, err := client.Write(payload); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(backend, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("payload: %v", err)
	}
	client.Close()
	_ = backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := backend.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("backend read after client close: %v, want EOF", err)
	}
	backend.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("splice did not end")
	}
}

// failingConn reads a few bytes, then fails the way a cut tunnel does.
type failingConn struct {
	net.Conn
	sent bool
}

var errCut = errors.New("tunnel cut")

func (f *failingConn) Read(p []byte) (int, error) {
	if !f.sent {
		f.sent = true
		return copy(p, "partial"), nil
	}
	return 0, errCut
}

// A source that is cut (not closed) is passed on as a reset, so the client
// cannot mistake a truncated stream for a complete one.
func TestCutSourceResetsTheOtherSide(t *testing.T) {
	client, a := tcpPair(t)
	b, backend := tcpPair(t)
	defer backend.Close()
	res := Splice(a, &failingConn{Conn: b})
	if !errors.Is(res.Err, errCut) {
		t.Fatalf("result error %v, want the cut", res.Err)
	}
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(client)
	if string(got) != "partial" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %q, %v; want the partial data, then a reset", got, err)
	}
	client.Close()
}

// halfClosingCut is a cut tunnel stream that can half-close, as a native
// stream can.
type halfClosingCut struct{ failingConn }

func (h *halfClosingCut) CloseWrite() error { return h.Conn.(*net.TCPConn).CloseWrite() }

// A cut source ends the whole connection even when both ends could
// half-close: a Unix-socket client (kube-apiserver on the UDS frontend)
// cannot be sent a reset, and a half-close would leave it holding a
// connection whose other end is gone. Splice ends without waiting for it,
// and the client's next write fails.
func TestCutSourceClosesAUnixPeer(t *testing.T) {
	client, a := socketPair(t, "unix")
	b, backend := tcpPair(t)
	defer backend.Close()
	defer client.Close()
	done := make(chan Result, 1)
	go func() { done <- Splice(a, &halfClosingCut{failingConn{Conn: b}}) }()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(client); string(got) != "partial" || err != nil {
		t.Fatalf("client read %q, %v; want the partial data, then the end", got, err)
	}
	select {
	case res := <-done:
		if !errors.Is(res.Err, errCut) {
			t.Fatalf("result error %v, want the cut", res.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("splice still holds the client's direction open after its source was cut")
	}
	if _, err := client.Write([]byte("anyone there?")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("client write after the cut: %v, want EPIPE", err)
	}
}

// Idle connections hold no copy buffer (sockets are read through their raw
// descriptors and give the buffer back while waiting), and wake up when
// bytes come: bulk and light traffic both ways, over TCP and Unix sockets.
func TestIdleHoldsNoBuffer(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			client, a := socketPair(t, network)
			b, backend := socketPair(t, network)
			done := make(chan Result, 1)
			go func() { done <- Splice(a, b) }()
			waitHeld := func(want int64) {
				t.Helper()
				deadline := time.Now().Add(10 * time.Second)
				for HeldBuffers() != want {
					if time.Now().After(deadline) {
						t.Fatalf("%d copy buffers held; want %d", HeldBuffers(), want)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			roundTrip := func(n int) { t.Helper(); echoThrough(t, client, backend, n) }
			waitHeld(0)
			roundTrip(10)
			waitHeld(0)
			roundTrip(8 << 20) // grows to the large buffer, then gives it back
			waitHeld(0)
			roundTrip(1)
			waitHeld(0)
			client.Close()
			backend.Close()
			if res := <-done; res.AtoB != 10+8<<20+1 || res.BtoA != res.AtoB {
				t.Fatalf("result %+v", res)
			}
			waitHeld(0)
		})
	}
}

// socketPair returns both ends of a loopback TCP or Unix connection.
func socketPair(t *testing.T, network string) (net.Conn, net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	c, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	return c, s
}

// A socket read allocates nothing per call (the raw-read callback is made
// once per connection).
func TestRawReadDoesNotAllocate(t *testing.T) {
	a, b := tcpPair(t)
	defer a.Close()
	defer b.Close()
	var bufs buffers
	defer bufs.release()
	s := newSource(b, &bufs)
	msg := []byte("x")
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := a.Write(msg); err != nil {
			t.Fatal(err)
		}
		if n, err := s.read(); n != 1 || err != nil {
			t.Fatalf("read %d, %v", n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per read", allocs)
	}
}

// TestNotifiedSourceIdlesWithoutGoroutine: a source that calls back when
// it has bytes (a package mux stream) is copied by a goroutine only while
// bytes come; an idle connection holds only the goroutine of Splice's
// caller, and no buffer. Bulk data still moves whole, both ways.
func TestNotifiedSourceIdlesWithoutGoroutine(t *testing.T) {
	far, near := muxPair(t)
	var _ ReadNotifier = near
	client, a := socketPair(t, "tcp")
	done := make(chan Result, 1)
	go func() { done <- Splice(a, near) }()

	// copiers counts the goroutines copying, in either direction.
	copiers := func() int {
		buf := make([]byte, 1<<20)
		n := 0
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "splice.copyBuf") || strings.Contains(g, "splice.(*notified).loop") {
				n++
			}
		}
		return n
	}
	waitIdle := func(what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for copiers() != 1 || HeldBuffers() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("after %s: %d goroutines copy the idle connection, %d buffers held; want 1 (reading the socket) and none", what, copiers(), HeldBuffers())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	roundTrip := func(n int) { t.Helper(); echoThrough(t, far, client, n) }
	waitIdle("the splice started")
	roundTrip(10)
	waitIdle("a small round trip")
	roundTrip(8 << 20) // large buffers, then given back
	waitIdle("8 MiB each way")
	roundTrip(1)
	waitIdle("a 1-byte round trip")

	// The far end's FIN reaches the client as EOF, and the splice ends.
	_ = far.Close()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read after the stream's FIN: %d, %v; want EOF", n, err)
	}
	client.Close()
	res := <-done
	if want := int64(10 + 8<<20 + 1); res.AtoB != want || res.BtoA != want || res.Err != nil {
		t.Fatalf("result %+v, want %d bytes each way and no error", res, want)
	}
	if n, held := copiers(), HeldBuffers(); n != 0 || held != 0 {
		t.Fatalf("after the splice: %d goroutines copy, %d buffers held; want none", n, held)
	}
}

// muxPair returns the two ends of one package mux stream over loopback
// TCP: far is the tunnel's far end (the test writes and reads it), near
// is what a splice gets.
func muxPair(t *testing.T) (far, near *mux.Stream) {
	t.Helper()
	cc, sc := tcpPair(t)
	cfg := &mux.Config{AcceptBacklog: 16, MaxStreamWindowSize: 256 << 10, ConnectionWriteTimeout: 10 * time.Second}
	ms, err := mux.Client(cc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	ss, err := mux.Server(sc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Close() })
	if far, err = ms.OpenStream(); err != nil {
		t.Fatal(err)
	}
	if near, err = ss.AcceptStream(); err != nil {
		t.Fatal(err)
	}
	return far, near
}

// goroutinesIn counts the goroutines whose stacks hold any of funcs.
func goroutinesIn(funcs ...string) int {
	buf := make([]byte, 1<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		for _, f := range funcs {
			if strings.Contains(g, f) {
				n++
				break
			}
		}
	}
	return n
}

// TestAsyncIdlesWithNoGoroutine: Async splices a socket and a mux stream with no
// goroutine at all while both are idle (the socket waits in the epoll set,
// the stream calls back) and no buffer; bytes still move both ways, small
// and bulk, a FIN travels, and done gets the counts once both ended. Close
// wakes an idle socket's side; the epoll set's goroutine ends with the
// last wait.
func TestAsyncIdlesWithNoGoroutine(t *testing.T) {
	copiers := func() int { return goroutinesIn("splice.copyBuf", "splice.(*notified).loop", "splice.(*polled).loop") }
	// waitIdle waits until no goroutine copies, no buffer is held, and
	// sockets sockets wait in the epoll set.
	waitIdle := func(what string, sockets int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for copiers() != 0 || HeldBuffers() != 0 || idle.Waiting() != sockets {
			if time.Now().After(deadline) {
				t.Fatalf("after %s: %d goroutines copy the idle connection, %d buffers held, %d sockets in the epoll set; want none, none and %d",
					what, copiers(), HeldBuffers(), idle.Waiting(), sockets)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	t.Run("traffic", func(t *testing.T) {
		far, near := muxPair(t)
		client, a := socketPair(t, "unix")
		done := make(chan Result, 2)
		as, ok := NewAsync(a, near)
		if !ok {
			t.Fatal("NewAsync declined a Unix socket and a mux stream")
		}
		as.Start(func(r Result) { done <- r })
		roundTrip := func(n int) { t.Helper(); echoThrough(t, client, far, n) }
		waitIdle("the splice started", 1)
		roundTrip(10)
		waitIdle("a small round trip", 1)
		roundTrip(8 << 20)
		waitIdle("8 MiB each way", 1)
		roundTrip(1)
		waitIdle("a 1-byte round trip", 1)

		// The stream's last bytes and FIN reach the client, and the
		// splice ends (a mux stream has no half-close of its own, so the
		// FIN ends both directions).
		if _, err := far.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		_ = far.Close()
		_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(client)
		if err != nil || string(got) != "bye" {
			t.Fatalf("client read %q, %v after the stream's FIN; want \"bye\" then EOF", got, err)
		}
		var res Result
		select {
		case res = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("done not called after both directions ended")
		}
		if want := int64(10 + 8<<20 + 1); res.AtoB != want || res.BtoA != want+3 || res.Err != nil {
			t.Fatalf("result %+v, want %d bytes up, %d down, no error", res, want, want+3)
		}
		client.Close()
		waitIdle("the end", 0)
		if len(done) != 0 {
			t.Fatal("done called twice")
		}
	})
	t.Run("closed-while-idle", func(t *testing.T) {
		far, near := muxPair(t)
		client, a := socketPair(t, "tcp")
		defer client.Close()
		done := make(chan Result, 1)
		as, ok := NewAsync(a, near)
		if !ok {
			t.Fatal("NewAsync declined a TCP socket and a mux stream")
		}
		as.Start(func(r Result) { done <- r })
		waitIdle("the splice started", 1)
		as.Close()
		// The socket's side ended at once: the client sees its close
		// (below); the stream's Close is a half-close, which the far end
		// answers with its own.
		_ = far.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := far.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("stream read after Close: %d, %v; want EOF", n, err)
		}
		_ = far.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("done not called after Close of an idle splice")
		}
		_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := client.Read(make([]byte, 1)); err == nil {
			t.Fatal("the client's connection is still open after Close")
		}
		deadline := time.Now().Add(10 * time.Second)
		for idle.Waiting() != 0 || goroutinesIn("idle.(*poller).loop") != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d sockets wait and %d poller goroutines run after the last splice ended; want none", idle.Waiting(), goroutinesIn("idle.(*poller).loop"))
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	t.Run("declines", func(t *testing.T) {
		a, b := socketPair(t, "tcp")
		defer a.Close()
		defer b.Close()
		if _, ok := NewAsync(a, b); ok {
			t.Fatal("NewAsync took two sockets (neither calls back when readable)")
		}
	})
}

// echoThrough sends n bytes from one end to the other, which sends them
// back: both must arrive whole (each read bounded by 10 s).
func echoThrough(t *testing.T, from, to net.Conn, n int) {
	t.Helper()
	msg := bytes.Repeat([]byte{'x'}, n)
	go func() { _, _ = from.Write(msg) }()
	got := make([]byte, n)
	_ = to.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(to, got); err != nil {
		t.Fatalf("read %d bytes on the way out: %v", n, err)
	}
	go func() { _, _ = to.Write(got) }()
	back := make([]byte, n)
	_ = from.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(from, back); err != nil {
		t.Fatalf("read %d bytes on the way back: %v", n, err)
	}
	if !bytes.Equal(back, msg) {
		t.Fatalf("%d bytes came back changed", n)
	}
}

// stingy is a mux stream whose TryWrite takes little: every third call
// nothing, else at most 700 bytes, so bursts end with bytes left for a
// plain Write.
type stingy struct {
	*mux.Stream
	calls atomic.Int64
}

func (s *stingy) TryWrite(p []byte) (int, error) {
	switch n := s.calls.Add(1); {
	case n%3 == 0:
		return 0, nil
	case len(p) > 700:
		return s.Stream.TryWrite(p[:700])
	}
	return s.Stream.TryWrite(p)
}

// TestAsyncBursts: a socket copied to a stream that takes writes without
// waiting is read in bursts that wait for the next bytes without a read
// that says there are none. Nothing may be lost or reordered by that:
// messages one at a time (each finds the socket drained), back-to-back
// messages, and a stream that takes only part of each burst.
func TestAsyncBursts(t *testing.T) {
	start := func(t *testing.T, wrap func(*mux.Stream) net.Conn) (client net.Conn, far *mux.Stream, done chan Result) {
		far, near := muxPair(t)
		client, a := socketPair(t, "unix")
		as, ok := NewAsync(a, wrap(near))
		if !ok {
			t.Fatal("NewAsync declined a Unix socket and a mux stream")
		}
		done = make(chan Result, 1)
		as.Start(func(r Result) { done <- r })
		return client, far, done
	}
	finish := func(t *testing.T, client net.Conn, far *mux.Stream, done chan Result, up int64) {
		// up: the bytes the client sent
		t.Helper()
		_ = far.Close()
		_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(client); err != nil {
			t.Fatalf("client after the stream's FIN: %v", err)
		}
		client.Close()
		select {
		case res := <-done:
			if res.AtoB != up || res.Err != nil {
				t.Fatalf("result %+v, want %d bytes up and no error", res, up)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("done not called after both directions ended")
		}
	}
	plain := func(st *mux.Stream) net.Conn { return st }
	t.Run("one-at-a-time", func(t *testing.T) {
		client, far, done := start(t, plain)
		var up int64
		for i := range 500 {
			n := 1 + (i*37)%3000
			echoThrough(t, client, far, n)
			up += int64(n)
		}
		finish(t, client, far, done, up)
	})
	// pattern is the stream of bytes sent: byte k is k mod 251, total
	// bytes in writes of 1 to 5000.
	const total = 4 << 20
	pattern := func(off, n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte((off + i) % 251)
		}
		return b
	}
	send := func(w io.Writer) {
		for off := 0; off < total; {
			n := min(1+(off/7)%5000, total-off)
			if _, err := w.Write(pattern(off, n)); err != nil {
				return
			}
			off += n
		}
	}
	check := func(t *testing.T, who string, r net.Conn) {
		t.Helper()
		got := make([]byte, total)
		_ = r.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("%s read: %v", who, err)
		}
		if want := pattern(0, total); !bytes.Equal(got, want) {
			i := 0
			for got[i] == want[i] {
				i++
			}
			t.Fatalf("byte %d of %d: got %d, want %d (lost or reordered)", i, total, got[i], want[i])
		}
	}
	// The other way, the stream's bytes are written to the socket by the
	// callback while the socket takes them at once, else by a goroutine:
	// a client that reads at once, and one that waits (the socket fills,
	// and what the callback read but could not write goes first).
	for _, pause := range []time.Duration{0, 300 * time.Millisecond} {
		t.Run(fmt.Sprintf("to-socket-after-%v", pause), func(t *testing.T) {
			client, far, done := start(t, plain)
			go send(far)
			time.Sleep(pause)
			check(t, "client", client)
			finish(t, client, far, done, 0)
		})
	}
	for _, c := range []struct {
		name string
		wrap func(*mux.Stream) net.Conn
	}{{"back-to-back", plain}, {"partial-takes", func(st *mux.Stream) net.Conn { return &stingy{Stream: st} }}} {
		t.Run(c.name, func(t *testing.T) {
			client, far, done := start(t, c.wrap)
			go send(client)
			check(t, "far", far)
			finish(t, client, far, done, total)
		})
	}
}

// Run copies from the socket on the calling goroutine while the socket is
// busy, and returns once it idles in the epoll set; the splice goes on
// from there as Start's does, to its end.
func TestAsyncRunReturnsWhenIdle(t *testing.T) {
	far, near := muxPair(t)
	client, a := socketPair(t, "unix")
	as, ok := NewAsync(a, near)
	if !ok {
		t.Fatal("NewAsync declined a Unix socket and a mux stream")
	}
	done := make(chan Result, 1)
	ran := make(chan struct{})
	// The client's first bytes are there before Run: it copies them.
	if _, err := client.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(ran)
		as.Run(func(r Result) { done <- r })
	}()
	got := make([]byte, 5)
	_ = far.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(far, got); err != nil || string(got) != "first" {
		t.Fatalf("the stream read %q, %v; want the client's first bytes", got, err)
	}
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return with the socket idle")
	}
	if idle.Waiting() != 1 {
		t.Fatalf("%d sockets in the epoll set after Run returned; want 1", idle.Waiting())
	}
	echoThrough(t, client, far, 1<<20)
	_ = far.Close()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if rest, err := io.ReadAll(client); err != nil || len(rest) != 0 {
		t.Fatalf("client read %d bytes, %v after the stream's FIN; want EOF", len(rest), err)
	}
	select {
	case res := <-done:
		if want := int64(5 + 1<<20); res.AtoB != want || res.BtoA != 1<<20 {
			t.Fatalf("result %+v, want %d bytes up and %d down", res, want, 1<<20)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("done not called after both directions ended")
	}
	client.Close()
}
