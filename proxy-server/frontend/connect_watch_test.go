package frontend

import (
	"bufio"
	"context"
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
