package native

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
)

// gatedDial dials loopback once gate is closed; started counts the dials
// that reached it.
func gatedDial(gate <-chan struct{}, started *atomic.Int64) link.DialFunc {
	return func(ctx context.Context, address string) (net.Conn, error) {
		started.Add(1)
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return loopbackDial(ctx, address)
	}
}

// A server cannot make the agent hold more dials than PendingDials: the
// excess is refused at once with the agent's reason, the dials in flight
// go through, and room comes back as they are answered.
func TestAgentRefusesDialsBeyondItsBound(t *testing.T) {
	echo := backend(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	gate := make(chan struct{})
	var started, busy atomic.Int64
	p := newPair(t, opts, AgentOptions{PendingDials: 3, OnBusy: func() { busy.Add(1) }}, gatedDial(gate, &started))

	type result struct {
		c   net.Conn
		err error
	}
	held := make(chan result, 3)
	for range 3 {
		go func() { c, err := p.server.Dial(dctx(t), echo); held <- result{c, err} }()
	}
	waitUntil(t, "3 dials held by the agent", func() bool { return started.Load() == 3 })
	for range 5 {
		_, err := p.server.Dial(dctx(t), echo)
		if link.ReasonOf(err) != link.ReasonError || !strings.Contains(err.Error(), link.ErrAgentBusy.Error()) ||
			!strings.Contains(err.Error(), "3 dial requests") {
			t.Fatalf("dial beyond the bound: %v, want the agent's busy refusal naming its bound", err)
		}
	}
	if n := busy.Load(); n != 5 {
		t.Fatalf("OnBusy called %d times, want 5", n)
	}
	close(gate)
	for range 3 {
		r := <-held
		if r.err != nil {
			t.Fatalf("a dial within the bound failed: %v", r.err)
		}
		r.c.Close()
	}
	// Answered dials free their room.
	waitUntil(t, "no dial pending on the agent", func() bool { return p.agent.pending.Load() == 0 })
	for range 4 {
		c, err := p.server.Dial(dctx(t), echo)
		if err != nil {
			t.Fatalf("dial after the held ones were answered: %v", err)
		}
		c.Close()
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// handshakeBoth connects an agent to a server over TLS on loopback; it
// returns the server's and the agent's handshake results.
func handshakeBoth(t *testing.T, so ServerOptions, ao AgentOptions, h Hello) (*ServerLink, error, *AgentLink, error) {
	t.Helper()
	st, ct := tlsPair(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", st)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		l   *ServerLink
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- res{nil, err}
			return
		}
		l, err := Accept(context.Background(), c, so)
		accepted <- res{l, err}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), ct)
	if err != nil {
		t.Fatal(err)
	}
	al, _, aerr := Connect(context.Background(), conn, h, ao)
	r := <-accepted
	return r.l, r.err, al, aerr
}

// A hello above the server's bound is refused with the reason, which the
// agent gets; the server's error is ErrControlTooLarge.
func TestHelloAboveTheBoundIsRefused(t *testing.T) {
	so := ServerOptions{ServerID: "s", ServerCount: 1, Config: Config{MaxControlMessage: MinControlMessage}}
	_, serr, _, aerr := handshakeBoth(t, so, AgentOptions{}, Hello{AgentID: "a", Token: strings.Repeat("t", 8<<10)})
	if !errors.Is(serr, ErrControlTooLarge) {
		t.Fatalf("server: %v, want ErrControlTooLarge", serr)
	}
	if !errors.Is(aerr, ErrRefused) || !strings.Contains(aerr.Error(), "control message too large") ||
		!strings.Contains(aerr.Error(), "the bound is 4096") {
		t.Fatalf("agent: %v, want a refusal that says the hello was too large for the bound", aerr)
	}
	// The same hello passes the default bound.
	sl, serr, al, aerr := handshakeBoth(t, ServerOptions{ServerID: "s", ServerCount: 1}, AgentOptions{},
		Hello{AgentID: "a", Token: strings.Repeat("t", 8<<10)})
	if serr != nil || aerr != nil {
		t.Fatalf("an 8 KiB hello under the default bound: server %v, agent %v", serr, aerr)
	}
	sl.Close()
	al.Close()
}

// A control message above the receiver's bound in a running session ends
// that session, on either end, with ErrControlTooLarge.
func TestControlMessageAboveTheBoundEndsTheSession(t *testing.T) {
	for _, side := range []string{"server", "agent"} {
		t.Run("received by the "+side, func(t *testing.T) {
			bounded := Config{MaxControlMessage: MinControlMessage}
			so, ao := ServerOptions{ServerID: "s", ServerCount: 1}, AgentOptions{}
			if side == "server" {
				so.Config = bounded
			} else {
				ao.Config = bounded
			}
			sl, serr, al, aerr := handshakeBoth(t, so, ao, Hello{AgentID: "a"})
			if serr != nil || aerr != nil {
				t.Fatalf("handshake: server %v, agent %v", serr, aerr)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, 2)
			wg.Add(3)
			go func() { defer wg.Done(); errs <- sl.Run(ctx) }()
			go func() { defer wg.Done(); errs <- al.Run(ctx) }()
			go func() { defer wg.Done(); linktest.Serve(ctx, al, loopbackDial) }()
			big := ctl{T: msgAbort, Error: strings.Repeat("x", 2*MinControlMessage)}
			sender := al.session
			if side == "agent" {
				sender = sl.session
			}
			// The write may fail: the receiver ends the session on the
			// length prefix, possibly before the body is through.
			if err := sender.writeCtl(big); err != nil && !errors.Is(err, link.ErrLinkClosed) {
				t.Fatal(err)
			}
			var tooLarge error
			for range 2 {
				select {
				case err := <-errs:
					if errors.Is(err, ErrControlTooLarge) {
						tooLarge = err
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the session did not end")
				}
			}
			if tooLarge == nil {
				t.Fatalf("no end reported ErrControlTooLarge")
			}
			cancel()
			wg.Wait()
		})
	}
}
