package frontend

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"isthmus.dev/tunnel/native/mux"
)

// muxDialer carries each connection on a stream of a real package mux
// session over loopback TCP, as the native link over --native-mux=isthmus
// does; far gets the other end of every stream.
type muxDialer struct {
	client, server *mux.Session
	far            chan *mux.Stream
}

func newMuxDialer(t *testing.T) *muxDialer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-acc
	if sc == nil {
		t.Fatal("accept failed")
	}
	cfg := &mux.Config{AcceptBacklog: 16, MaxStreamWindowSize: 256 << 10, ConnectionWriteTimeout: 10 * time.Second}
	d := &muxDialer{far: make(chan *mux.Stream, 16)}
	if d.client, err = mux.Client(cc, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.client.Close() })
	if d.server, err = mux.Server(sc, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.server.Close() })
	return d
}

func (d *muxDialer) Dial(context.Context, string) (net.Conn, error) {
	st, err := d.client.OpenStream()
	if err != nil {
		return nil, err
	}
	far, err := d.server.AcceptStream()
	if err != nil {
		return nil, err
	}
	d.far <- far
	return st, nil
}

// TestConnectCloseEndsIdleAsyncSplices: a connection spliced with no
// goroutine while idle (a socket client, a stream that calls back) is
// ended by Close, which closes its socket through the splice (a socket
// closed under the epoll set's wait would never wake it), and Close
// returns once it ended; the tunnel's far end sees the close.
func TestConnectCloseEndsIdleAsyncSplices(t *testing.T) {
	d := newMuxDialer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Connect{Dialer: d, Log: slog.New(slog.DiscardHandler), Tracker: &Tracker{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan struct{})
	go func() { defer close(served); _ = s.Serve(ctx, ln) }()

	code, _, _, c, br := roundTrip(t, ln.Addr().String(), "CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n")
	if code != 200 {
		t.Fatalf("CONNECT answered %d", code)
	}
	far := <-d.far
	if _, err := far.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "hi" {
		t.Fatalf("client read %q, %v", got, err)
	}
	// The far end answers the stream's FIN with its own, as a peer does.
	farDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, far)
		_ = far.Close()
		farDone <- err
	}()

	closed := make(chan struct{})
	go func() { _ = s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return: the idle spliced connection was not ended")
	}
	if err := <-farDone; err != nil {
		t.Fatalf("the tunnel's far end: %v, want a clean end", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read after Close: %d, %v; want EOF", n, err)
	}
	cancel()
	<-served
}
