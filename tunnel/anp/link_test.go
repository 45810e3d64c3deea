package anp

import (
	"context"
	"io"
	"testing"
	"time"

	"go.uber.org/goleak"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
)

// The behaviour every link shares is tested by the conformance suite
// (conformance_test.go); these are the helpers of the ANP-only tests.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair is a server link and an agent link joined by a real gRPC stream on
// loopback.
type pair struct {
	server *ServerLink
	agent  *AgentLink
}

// newPair connects a server link and an agent link that answers with dial.
// Everything stops at test cleanup.
func newPair(t *testing.T, so ServerOptions, ao AgentOptions, dial link.DialFunc) *pair {
	t.Helper()
	e := connect(t, so, ao, dial)
	return &pair{server: e.server, agent: e.agent}
}

var loopbackDial = linktest.LoopbackDial

// echoServer echoes on loopback until cleanup and reports how many
// connections are open.
func echoServer(t *testing.T) (addr string, open func() int) {
	t.Helper()
	b := linktest.StartBackend(t, linktest.Echo)
	return b.Addr(), b.Open
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func dialCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Each end's Observer sees the packets it sends and receives (ANP's
// stream_packets_total), and no stream error on a healthy link.
func TestObserverCountsPackets(t *testing.T) {
	addr, _ := echoServer(t)
	so, ao := &countingObserver{}, &countingObserver{}
	p := newPair(t, ServerOptions{Observer: so}, AgentOptions{Observer: ao}, loopbackDial)
	c, err := p.server.Dial(dialCtx(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// DIAL_REQ, DATA and CLOSE_REQ one way; DIAL_RSP, DATA and CLOSE_RSP
	// the other.
	waitFor(t, "every packet observed", func() bool {
		return so.sent.Load() == 3 && so.received.Load() == 3 && ao.sent.Load() == 3 && ao.received.Load() == 3
	})
	if so.errors.Load()+ao.errors.Load() != 0 {
		t.Fatalf("stream errors on a healthy link: server %d, agent %d", so.errors.Load(), ao.errors.Load())
	}
}
