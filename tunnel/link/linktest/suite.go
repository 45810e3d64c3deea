package linktest

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"isthmus.dev/tunnel/link"
)

// The conformance suite: one set of scenarios run over every link (as
// yamux's session_test.go runs each test over every transport), checking
// each link against the behaviour its capabilities document. A link's
// tests call Run with a factory that connects a real server end to a real
// agent end over the link's own transport on loopback.

// Caps are what a link's wire can do. The suite checks the documented
// behaviour of each: what a link has, and what it does instead where it has
// not.
type Caps struct {
	// HalfClose: tunneled connections have CloseWrite at both ends and EOF
	// ends one direction only. Without it (ANP), EOF from either side ends
	// the whole connection.
	HalfClose bool
	// FlowControl: each connection has a window of its own, so a reader
	// that stalls makes only its own connection wait. Without it (ANP), the
	// link's reader waits for a full queue's reader at most
	// Options.StallTimeout (the link's other connections wait that long),
	// then cuts that connection alone with link.ErrQueueOverflow.
	FlowControl bool
	// CutToAgent: a connection the server end cuts (SetLinger(0), then
	// Close, as a splice does when its other side was reset) reaches the
	// backend as a reset. Without it (ANP: CLOSE_REQ carries no error), the
	// backend sees a plain close.
	CutToAgent bool
}

// Options tune the pair a scenario asks for; zero values take the link's
// defaults. Links with flow control ignore them.
type Options struct {
	// QueueBytes is a connection's receive queue.
	QueueBytes int
	// StallTimeout is how long a full queue's reader may take nothing
	// before its connection is cut.
	StallTimeout time.Duration
}

// Pair is a server end and an agent end of one link, connected. The
// factory runs both ends; the suite answers the agent's requests.
type Pair struct {
	Server link.Dialer
	Agent  link.Acceptor
	// ServerActive and AgentActive count each end's live connections.
	ServerActive, AgentActive func() int
	// ServerDone is closed once the server end has ended.
	ServerDone <-chan struct{}
	// Cut breaks the transport under the link as a lost network does:
	// the agent's TCP connection is reset, with no goodbye on the link.
	Cut func()
	// Stalls counts the connections the link cut for a stalled reader
	// (nil on a link with flow control).
	Stalls func() int
	// Close ends both ends and waits for everything the factory started.
	// It may be called more than once; the factory also calls it at the
	// test's cleanup.
	Close func()
}

// Link is one link under test.
type Link struct {
	Name string
	Caps Caps
	// New connects a server end to an agent end over the link's real
	// transport on loopback (TLS, gRPC) and runs both until Pair.Close or
	// t's cleanup.
	New func(t testing.TB, o Options) *Pair
}

// scenario is one behaviour, checked over a link.
type scenario struct {
	name string
	run  func(t *testing.T, l Link)
}

// scenarios are the suite, in the order Run runs them.
var scenarios = []scenario{
	{"echo", testEcho},
	{"net.Conn/server-end", func(t *testing.T, l Link) { testNetConn(t, l, false) }},
	{"net.Conn/agent-end", func(t *testing.T, l Link) { testNetConn(t, l, true) }},
	{"half-close", testHalfClose},
	{"close/client-first", testCloseClientFirst},
	{"close/client-first-mid-download", testCloseMidDownload},
	{"close/client-write-then-close", testCloseAfterWrite},
	{"close/backend-first", testCloseBackendFirst},
	{"close/both", testCloseBoth},
	{"abort/backend-cut", testAbortBackend},
	{"abort/client-cut", testAbortClient},
	{"dial-failure", testDialFailures},
	{"cancel/while-dialing", testCancelWhileDialing},
	{"cancel/before-answer", testCancelBeforeAnswer},
	{"link-loss", testLinkLoss},
	{"stalled-reader", testStalledReader},
	{"slow-reader", testSlowReader},
	{"idle-holds-no-buffer", testIdleHoldsNoBuffer},
}

// Run runs every scenario over l, each as a subtest with a pair of its
// own. Scenarios run one after another: the idle-buffer count is the
// process's.
func Run(t *testing.T, l Link) {
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) { s.run(t, l) })
	}
}

// serve answers p's requests as the agent does (dial, answer, splice) with
// dial, until the test ends; then it ends the pair and waits for every
// connection it spliced.
func serve(t testing.TB, p *Pair, dial link.DialFunc) {
	t.Helper()
	serveWith(t, p, func(r link.Request) { ServeOne(r, dial) })
}

// serveWith hands each of p's requests to handle, on a goroutine of its
// own, until the test ends.
func serveWith(t testing.TB, p *Pair, handle func(link.Request)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			r, err := p.Agent.Accept(ctx)
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); handle(r) }()
		}
	}()
	t.Cleanup(func() {
		cancel()
		p.Close() // ends every connection, so every handler returns
		wg.Wait()
	})
}

// LoopbackDial dials TCP address, as an agent dials a backend.
func LoopbackDial(ctx context.Context, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", address)
}

// dial dials address through p and closes the connection at cleanup.
func dial(t testing.TB, p *Pair, address string) net.Conn {
	t.Helper()
	c, err := p.Server.Dial(ctx(t, 20*time.Second), address)
	if err != nil {
		t.Fatalf("dial %s: %v", address, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ctx is a context that ends after d or at the test's end.
func ctx(t testing.TB, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// waitFor polls cond until it holds, failing t after 20 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// noLeftovers waits until neither end holds a connection and every
// backend has closed its connections.
func noLeftovers(t testing.TB, p *Pair, backends ...*Backend) {
	t.Helper()
	waitFor(t, "both ends to forget their connections", func() bool { return p.ServerActive() == 0 && p.AgentActive() == 0 })
	for _, b := range backends {
		waitFor(t, "the backend's connections to close", func() bool { return b.Open() == 0 })
	}
}

// readAll reads c to its end, bounded by d (deadlines are part of the
// net.Conn contract the suite checks). Only a clean end (io.EOF itself)
// gives a nil error.
func readAll(c net.Conn, d time.Duration) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	var out []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}
