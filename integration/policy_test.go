package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// An agent with --allowed-destinations never dials a destination outside
// it: the destination's namespace sees not one packet (its firewall counts
// them) and its listener no connection; the client gets the reason
// (CONNECT 403, a DIAL_RSP error on gRPC); and a transfer the same agent
// carries on another connection goes on, on both links and frontends.
func TestAgentDestinationPolicy(t *testing.T) {
	harness.LeakCheck(t)
	const deniedPort, allowedPort = 7001, 7002
	target := harness.NewTarget(t, deniedPort, allowedPort)
	listen := func(port int) net.Listener {
		ln, err := target.Listen(port)
		if err != nil {
			t.Fatalf("listen on %s in %s: %v", target.Addr(port), target.Name, err)
		}
		return ln
	}
	denied := harness.ServeBackend(t, listen(deniedPort), harness.Echo)
	harness.ServeBackend(t, listen(allowedPort), harness.Echo)
	// Only the allowed port of the target, written in the forms the flag
	// takes (a CIDR with a port, a port range).
	policy := fmt.Sprintf("--allowed-destinations=%s/32:%d,127.0.0.0/8:1-1023", target.NSAddr, allowedPort)
	pki := harness.NewPKI(t)

	for _, mode := range []string{harness.HTTPConnect, harness.GRPC} {
		for _, link := range []string{"native", "anp"} {
			t.Run(mode+"/"+link, func(t *testing.T) {
				s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: mode})
				a := harness.StartAgent(t, bins, s, harness.AgentOpts{Extra: []string{"--link=" + link, policy}})
				s.WaitReady(t)
				xfer := startEchoLoop(t, s, target.Addr(allowedPort))
				xfer.waitRounds(t, 3)

				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				c, err := s.Dial(ctx, target.Addr(deniedPort))
				if err == nil {
					c.Close()
				}
				faultExpectDialError(t, mode, err, 403)
				var ce *harness.ConnectError
				switch {
				case errors.As(err, &ce) && !strings.Contains(ce.StatusLine, "policy"):
					t.Errorf("CONNECT status line %q does not name the policy", ce.StatusLine)
				case ce == nil && !strings.Contains(err.Error(), "not allowed by policy"):
					t.Errorf("gRPC dial error %q does not say \"not allowed by policy\"", err)
				}
				harness.WaitMetric(t, 10*time.Second, a.MetricsURL(), "konnectivity_network_proxy_agent_endpoint_dial_failure_total", 1, "reason", "policy")

				// The transfer went on through the refusal.
				xfer.waitRounds(t, xfer.rounds()+3)
				xfer.stop(t)
				if n := target.Packets(t, deniedPort); n != 0 || denied.Accepted() != 0 {
					t.Fatalf("the refused destination saw %d packets and %d connections; want none", n, denied.Accepted())
				}
			})
		}
	}
	// The counter works: the allowed port saw the transfers' packets.
	if n := target.Packets(t, allowedPort); n == 0 {
		t.Fatalf("the allowed port's counter is 0 after the transfers: the packet count proves nothing")
	}
}

// echoLoop sends chunks on one tunneled connection to an echo backend and
// checks each comes back, until stopped.
type echoLoop struct {
	c    net.Conn
	done chan struct{}
	quit chan struct{}
	mu   sync.Mutex
	n    int
	err  error
}

func startEchoLoop(t *testing.T, s *harness.Server, addr string) *echoLoop {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := s.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("dial the allowed destination %s: %v", addr, err)
	}
	l := &echoLoop{c: c, done: make(chan struct{}), quit: make(chan struct{})}
	go l.run()
	t.Cleanup(func() { c.Close(); <-l.done })
	return l
}

func (l *echoLoop) run() {
	defer close(l.done)
	chunk := make([]byte, 32<<10)
	got := make([]byte, len(chunk))
	for i := 0; ; i++ {
		select {
		case <-l.quit:
			return
		default:
		}
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		_ = l.c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := l.c.Write(chunk)
		if err == nil {
			_, err = io.ReadFull(l.c, got)
		}
		if err == nil && !bytes.Equal(got, chunk) {
			err = fmt.Errorf("round %d: the echo differs", i)
		}
		l.mu.Lock()
		l.err = err
		if err == nil {
			l.n++
		}
		l.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (l *echoLoop) rounds() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// waitRounds waits until n rounds have come back, and fails on an error.
func (l *echoLoop) waitRounds(t *testing.T, n int) {
	t.Helper()
	harness.WaitFor(t, 20*time.Second, fmt.Sprintf("%d echo rounds", n), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			t.Fatalf("transfer on the allowed connection: %v", l.err)
		}
		return l.n >= n
	})
}

func (l *echoLoop) stop(t *testing.T) {
	t.Helper()
	close(l.quit)
	select {
	case <-l.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the transfer loop did not stop")
	}
	if l.err != nil {
		t.Fatalf("transfer on the allowed connection: %v", l.err)
	}
}
