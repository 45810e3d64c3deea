package linktest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
)

// testLinkLoss: the transport under the link breaks. Every connection
// fails with ErrLinkClosed (never a clean EOF), new dials fail at once with
// reason link_closed, the agent stops taking requests and closes its
// backend connections.
func testLinkLoss(t *testing.T, l Link) {
	const conns = 3
	p := l.New(t, Options{})
	echo := StartBackend(t, Echo)
	serve(t, p, LoopbackDial)
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i] = dial(t, p, echo.Addr())
		roundTrip(t, cs[i], "before the loss")
	}
	p.Cut()
	await(t, p.ServerDone, "the server end to notice the link's loss")
	for i, c := range cs {
		if _, err := readAll(c, 20*time.Second); !errors.Is(err, link.ErrLinkClosed) {
			t.Errorf("connection %d, read after the link's loss: %v; want ErrLinkClosed", i, err)
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, link.ErrLinkClosed) {
			t.Errorf("connection %d, write after the link's loss: %v; want ErrLinkClosed", i, err)
		}
	}
	// A long deadline: the dial must fail for the link's state, not wait.
	c, err := p.Server.Dial(ctx(t, time.Minute), echo.Addr())
	if c != nil {
		_ = c.Close()
	}
	if link.ReasonOf(err) != link.ReasonLinkClosed || !errors.Is(err, link.ErrLinkClosed) {
		t.Fatalf("dial on a lost link: %v; want reason link_closed", err)
	}
	if _, err := p.Agent.Accept(ctx(t, time.Minute)); !errors.Is(err, link.ErrLinkClosed) {
		t.Fatalf("the agent's Accept on a lost link: %v; want ErrLinkClosed", err)
	}
	for _, c := range cs {
		_ = c.Close()
	}
	noLeftovers(t, p, echo)
}

// stallFlood is how much a stalled reader's backend sends: more than a
// link buffers for one connection (window, queue, socket buffers).
const stallFlood = 24 << 20

// testStalledReader: one connection's reader stops while its backend keeps
// sending; another connection of the same link keeps its round trips
// going, before, during and after the stall. With flow control the stalled
// one only waits, and gets every byte once it reads again. Without, the
// link waits for it at most the stall timeout (the other connection waits
// too), then cuts it alone (ErrQueueOverflow) and closes its backend.
func testStalledReader(t *testing.T, l Link) {
	p := l.New(t, Options{QueueBytes: 256 << 10, StallTimeout: 200 * time.Millisecond})
	serve(t, p, LoopbackDial)
	var sent atomic.Int64
	flood := StartBackend(t, func(c net.Conn) {
		chunk := bytes.Repeat([]byte{'f'}, 64<<10)
		for sent.Load() < stallFlood {
			n, err := c.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	echo := StartBackend(t, Echo)
	other := dial(t, p, echo.Addr())
	trips := roundTrips(t, other)

	stalled := dial(t, p, flood.Addr())
	if _, err := io.ReadFull(stalled, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	// From here the reader stalls; the flood fills whatever the link
	// buffers for it.
	waitFor(t, "the flood to stop for the stalled reader", func() bool {
		before := sent.Load()
		time.Sleep(100 * time.Millisecond)
		return sent.Load() == before
	})
	trips.more(t, 100)
	if !l.Caps.FlowControl {
		_ = stalled.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadAll(stalled); !errors.Is(err, link.ErrQueueOverflow) {
			t.Fatalf("the stalled connection: %v; want it cut with ErrQueueOverflow", err)
		}
		if n := p.Stalls(); n != 1 {
			t.Fatalf("the link counts %d stalled connections; want 1", n)
		}
	} else {
		if flood.Open() != 1 || sent.Load() >= stallFlood {
			t.Fatalf("the stalled connection's backend: %d open, %d of %d bytes sent; want it waiting", flood.Open(), sent.Load(), stallFlood)
		}
		got, err := readAll(stalled, 60*time.Second)
		if err != nil || len(got) != stallFlood-1<<20 || bytes.Count(got, []byte{'f'}) != len(got) {
			t.Fatalf("the stalled connection, reading again: %d bytes, %v; want the rest of the flood, then EOF", len(got), err)
		}
	}
	trips.more(t, 10)
	trips.stop(t)
	_ = stalled.Close()
	_ = other.Close()
	noLeftovers(t, p, flood, echo)
}

// tripper does round trips on a connection in the background.
type tripper struct {
	n    atomic.Int64
	quit func()        // stops the round trips; idempotent
	done chan struct{} // closed when the round trips ended; err is then set
	err  error         // the first failure
}

// roundTrips starts round trips on c until stop or the test's end.
func roundTrips(t testing.TB, c net.Conn) *tripper {
	quit := make(chan struct{})
	r := &tripper{quit: sync.OnceFunc(func() { close(quit) }), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			default:
			}
			if err := echoRoundTrip(c, fmt.Sprintf("round trip %06d", i)); err != nil {
				r.err = fmt.Errorf("round trip %d: %w", i, err)
				return
			}
			r.n.Add(1)
		}
	}()
	t.Cleanup(func() {
		r.quit()
		_ = c.Close()
		<-r.done
	})
	return r
}

// more waits for n more round trips.
func (r *tripper) more(t testing.TB, n int64) {
	t.Helper()
	want := r.n.Load() + n
	waitFor(t, fmt.Sprintf("%d more round trips on the other connection", n), func() bool {
		select {
		case <-r.done:
			t.Fatalf("the other connection: %v", r.err)
		default:
		}
		return r.n.Load() >= want
	})
}

// stop ends the round trips; none may have failed.
func (r *tripper) stop(t testing.TB) {
	t.Helper()
	r.quit()
	<-r.done
	if r.err != nil {
		t.Fatalf("the other connection: %v", r.err)
	}
}

// testSlowReader: a reader slower than its sender, but reading, is
// throttled, never cut, and gets every byte; on a link without flow
// control this holds through a queue far smaller than the stream.
func testSlowReader(t *testing.T, l Link) {
	const size = 2 << 20
	// A stall timeout far above the reader's pace even on a loaded
	// machine: what is tested is that steady progress is never cut.
	p := l.New(t, Options{QueueBytes: 64 << 10, StallTimeout: 5 * time.Second})
	echo := StartBackend(t, Echo)
	serve(t, p, LoopbackDial)
	c := dial(t, p, echo.Addr())
	data := bytes.Repeat([]byte("slow reader "), size/12)
	go func() { _, _ = c.Write(data) }()
	got := make([]byte, 0, len(data))
	buf := make([]byte, 16<<10)
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	for len(got) < len(data) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(got), len(data), err)
		}
		got = append(got, buf[:n]...)
		time.Sleep(time.Millisecond) // slower than the echo, never stalled
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the data differs")
	}
	_ = c.Close()
	noLeftovers(t, p, echo)
}

// testIdleHoldsNoBuffer: idle connections hold no copy buffer on the
// agent (splice waits without one, as it does on sockets), wake up when
// bytes come, and give back the large buffer bulk data took.
func testIdleHoldsNoBuffer(t *testing.T, l Link) {
	const conns = 3
	p := l.New(t, Options{})
	echo := StartBackend(t, Echo)
	serve(t, p, LoopbackDial)
	idle := func(when string) {
		t.Helper()
		waitFor(t, fmt.Sprintf("no copy buffer held %s (%d held)", when, splice.HeldBuffers()),
			func() bool { return splice.HeldBuffers() == 0 })
	}
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i] = dial(t, p, echo.Addr())
	}
	idle("by connections never used")
	for _, n := range []int{1, 4 << 20, 100} {
		for i, c := range cs {
			msg := bytes.Repeat([]byte{byte('a' + i)}, n)
			go func() { _, _ = c.Write(msg) }()
			got := make([]byte, n)
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("connection %d, echo of %d bytes: %v", i, n, err)
			}
		}
		idle(fmt.Sprintf("after echoes of %d bytes", n))
	}
	for _, c := range cs {
		_ = c.Close()
	}
	noLeftovers(t, p, echo)
	idle("after the connections closed")
}
