package splice

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	return c, s
}

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
