package frontend

import (
	"bufio"
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestWatchHangupStopBeforeWatcherRuns: a dial that fails at once (no agent
// for the destination) stops the hang-up watcher before its goroutine has
// run; stop must still return at once, or the client never gets its answer.
func TestWatchHangupStopBeforeWatcherRuns(t *testing.T) {
	// One P: the watcher goroutine runs only when this one blocks in stop.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i := range 20 {
		cli, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		srv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		_, cancel := context.WithCancel(context.Background())
		stop := watchHangup(srv, bufio.NewReader(srv), cancel)
		// If stop hangs, closing the client ends the watcher's read.
		rescue := time.AfterFunc(2*time.Second, func() { _ = cli.Close() })
		stop()
		hung := !rescue.Stop()
		cancel()
		_ = cli.Close()
		_ = srv.Close()
		if hung {
			t.Fatalf("round %d: stop waited until the client hung up", i)
		}
	}
}

// watchPair is a client connection and the server's end of it.
func watchPair(t *testing.T) (cli, srv net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close(); _ = srv.Close() })
	return cli, srv
}

// A dial that outlasts hangupWatchDelay is watched: the client's hang-up,
// before or after the watch starts, cancels it.
func TestWatchHangupCancelsSlowDial(t *testing.T) {
	for _, early := range []bool{true, false} {
		cli, srv := watchPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		if early {
			_ = cli.Close() // before the watch starts
		}
		stop := watchHangup(srv, bufio.NewReader(srv), cancel)
		if !early {
			time.Sleep(3 * hangupWatchDelay) // the watcher waits in Peek
			_ = cli.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("hang-up (before the watch: %v) did not cancel the dial", early)
		}
		stop()
	}
}

// Stopping a watch under way wakes its watcher and returns; the dial is
// not cancelled, and bytes the client sent meanwhile stay for the tunnel.
func TestWatchHangupStopWhileWatching(t *testing.T) {
	cli, srv := watchPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	br := bufio.NewReader(srv)
	stop := watchHangup(srv, br, cancel)
	time.Sleep(3 * hangupWatchDelay)
	if _, err := cli.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	rescue := time.AfterFunc(5*time.Second, func() { _ = cli.Close() })
	stop()
	if !rescue.Stop() {
		t.Fatal("stop waited until the client hung up")
	}
	if ctx.Err() != nil {
		t.Fatal("stopping the watch cancelled the dial")
	}
	if err := srv.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "early" {
		t.Fatalf("the client's early bytes: %q, %v", got, err)
	}
}
