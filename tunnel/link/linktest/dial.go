package linktest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"isthmus.dev/tunnel/link"
)

// testDialFailures: every way a backend dial fails reaches the server as
// a DialError with its reason (the CONNECT status and the metrics come
// from it), whatever the words of the agent's error.
func testDialFailures(t *testing.T, l Link) {
	cases := []struct {
		name   string
		reason link.Reason
		target func(t testing.TB) string
		handle func(r link.Request)
	}{
		{"refused", link.ReasonRefused, closedPort, func(r link.Request) { ServeOne(r, LoopbackDial) }},
		{"unreachable", link.ReasonUnreachable, func(t testing.TB) string {
			if os.Geteuid() != 0 {
				t.Skip("a network namespace for an unreachable address needs root; refused and timeout cover the rest")
			}
			return "192.0.2.1:443" // TEST-NET-1, dialed from a namespace with no route at all
		}, func(r link.Request) { ServeOne(r, dialIsolated) }},
		{"timeout", link.ReasonTimeout, unanswered, func(r link.Request) {
			ServeOne(r, func(ctx context.Context, address string) (net.Conn, error) {
				ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond) // the agent's dial timeout
				defer cancel()
				return LoopbackDial(ctx, address)
			})
		}},
		{"policy", link.ReasonPolicy, func(testing.TB) string { return "192.0.2.7:22" }, func(r link.Request) {
			// Words unlike any dial error: the reason must travel by itself.
			r.Refuse(link.ReasonPolicy, fmt.Errorf("destination %s is outside the agent's allowed list", r.Address()))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.target(t)
			p := l.New(t, Options{})
			serveWith(t, p, tc.handle)
			c, err := p.Server.Dial(ctx(t, 20*time.Second), target)
			if c != nil {
				_ = c.Close()
				t.Fatalf("dial %s connected; want reason %s", target, tc.reason)
			}
			var de *link.DialError
			if !errors.As(err, &de) {
				t.Fatalf("dial %s: %v (%T); want a *link.DialError", target, err, err)
			}
			if de.Reason != tc.reason || link.ReasonOf(err) != tc.reason || de.Address != target {
				t.Fatalf("dial %s: %v; want reason %s for address %s", target, err, tc.reason, target)
			}
			if de.Timeout() != (tc.reason == link.ReasonTimeout) {
				t.Fatalf("dial %s: Timeout() = %v for reason %s", target, de.Timeout(), de.Reason)
			}
			noLeftovers(t, p)
		})
	}
}

// testCancelWhileDialing: the server gives up on a dial (its context is
// cancelled, or its deadline passes) while the agent is still dialing: the
// server's Dial returns at once with that reason, the agent's Request
// context ends, which ends its backend dial, and nothing is left.
func testCancelWhileDialing(t *testing.T, l Link) {
	t.Run("cancel", func(t *testing.T) { cancelWhileDialing(t, l, link.ReasonCancelled) })
	t.Run("deadline", func(t *testing.T) { cancelWhileDialing(t, l, link.ReasonTimeout) })
}

func cancelWhileDialing(t *testing.T, l Link, reason link.Reason) {
	target := unanswered(t)
	p := l.New(t, Options{})
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	serveWith(t, p, func(r link.Request) {
		started <- struct{}{}
		c, err := LoopbackDial(r.Context(), r.Address()) // bounded by the request alone
		if c != nil {
			_ = c.Close()
			err = errors.New("the dial connected")
		}
		ended <- err
		r.Refuse(link.Classify(err), err)
	})
	dctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if reason == link.ReasonTimeout {
		dctx, cancel = context.WithTimeout(dctx, 300*time.Millisecond)
		defer cancel()
	}
	errc := make(chan error, 1)
	go func() {
		c, err := p.Server.Dial(dctx, target)
		if c != nil {
			_ = c.Close()
		}
		errc <- err
	}()
	await(t, started, "the agent to take the dial")
	if reason == link.ReasonCancelled {
		cancel()
	}
	if err := await(t, errc, "the server's dial to end with its context"); link.ReasonOf(err) != reason {
		t.Fatalf("the server's dial: %v; want reason %s", err, reason)
	}
	if err := await(t, ended, "the agent's backend dial to be cancelled"); !errors.Is(err, context.Canceled) {
		t.Fatalf("the agent's backend dial ended with %v; want its request's context cancelled", err)
	}
	noLeftovers(t, p)
}

// testCancelBeforeAnswer: the agent's backend connected, but the server
// gave up before the answer: Accept fails, the agent closes the backend
// connection, and nothing is left at either end or at the backend.
func testCancelBeforeAnswer(t *testing.T, l Link) {
	p := l.New(t, Options{})
	echo := StartBackend(t, Echo)
	accepted := make(chan error, 1)
	serveWith(t, p, func(r link.Request) {
		backend, err := LoopbackDial(context.Background(), r.Address())
		if err != nil {
			accepted <- err
			r.Refuse(link.Classify(err), err)
			return
		}
		<-r.Context().Done() // the server's cancel, carried by the link
		c, err := r.Accept(backend)
		if err == nil {
			_ = c.Close()
			err = errors.New("Accept of a cancelled request succeeded")
		} else {
			err = nil
		}
		_ = backend.Close()
		accepted <- err
	})
	dctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		c, err := p.Server.Dial(dctx, echo.Addr())
		if c != nil {
			_ = c.Close()
		}
		errc <- err
	}()
	waitFor(t, "the agent's backend connection", func() bool { return echo.Open() == 1 })
	cancel()
	if err := await(t, errc, "the server's dial to end"); link.ReasonOf(err) != link.ReasonCancelled {
		t.Fatalf("the server's dial: %v; want reason cancelled", err)
	}
	if err := await(t, accepted, "the agent's request context to end after the server's cancel"); err != nil {
		t.Fatal(err)
	}
	noLeftovers(t, p, echo)
}

// await receives from ch, failing t after 20 s.
func await[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}
