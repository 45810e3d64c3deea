package anp

import (
	"bytes"
	"context"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// FuzzServerLink plays an agent, from the fuzz input, against a ServerLink
// that dials through it: any packets, in any order, with any payload,
// interleaved with the server's dials, writes, reads and closes. The link
// never panics, deadlocks or leaks a goroutine; its packets stay in
// proportion to the input; a dial answered with a connectID returns its
// connection and any other answer an error; and each connection reads
// exactly the bytes the agent sent for it, in order, then EOF or an error
// once the agent closed or cut it.
func FuzzServerLink(f *testing.F) {
	for _, s := range [][]byte{
		{},
		// dial; DIAL_RSP{random 0, id 1}; DATA{1, "hi"}; CLOSE_RSP{1}
		{2, 0, 1, 0, 0, 2, 0, 0, 4, 0, 2, 2, 'h', 'i', 0, 3, 0, 2, 0},
		// dial; DIAL_RSP with an error; dial; DIAL_CLS; DRAIN
		{2, 0, 1, 0, 0, 1, 2, 2, 0, 5, 0, 1, 0, 6, 0},
		// two dials answered with the same id, writes, reads, closes
		{2, 2, 0, 1, 0, 0, 2, 0, 1, 0, 1, 1, 2, 0, 0, 4, 0, 2, 3, 'a', 'b', 'c', 3, 0, 2, 'x', 'y', 5, 0, 4, 0, 4, 1},
		// packets of unknown type and with payloads of other types
		{0, 7, 0x83, 1, 0, 4, 0x81, 0, 1, 1, 0, 3, 0x84, 2, 9, 'z', 0, 1, 0x80},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base := runtime.NumGoroutine()
		h := newServerHarness(t)
		h.run(&prog{b: data})
		h.finish()
		checkNoLeak(t, base)
	})
}

// serverDial is one dial of the harness, and what the agent's packets
// made of it (the model).
type serverDial struct {
	random int64
	done   chan struct{}
	conn   net.Conn // set when done
	err    error

	answered bool   // the agent answered or cancelled
	ok       bool   // the answer made a connection
	id       int64  // its connectID (any but 0)
	want     []byte // what the agent sent on it, not read yet
	ended    bool   // the agent closed or cut it
	closed   bool   // the harness closed it
}

type serverHarness struct {
	t       *testing.T
	s       *memStream
	l       *ServerLink
	cancel  context.CancelFunc
	runDone chan error
	dials   []*serverDial
	live    map[int64]*serverDial // by connectID
	ops     int
	drained bool
	wg      sync.WaitGroup
}

func newServerHarness(t *testing.T) *serverHarness {
	ctx, cancel := context.WithCancel(context.Background())
	h := &serverHarness{t: t, s: newMemStream(ctx), cancel: cancel, runDone: make(chan error, 1), live: map[int64]*serverDial{}}
	h.l = NewServerLink(h.s, ServerOptions{AgentID: "fuzz", QueueBytes: 1 << 20})
	go func() { h.runDone <- h.l.Run(context.Background()) }()
	return h
}

func (h *serverHarness) randoms() []int64 {
	out := make([]int64, len(h.dials))
	for i, d := range h.dials {
		out[i] = d.random
	}
	return out
}

func (h *serverHarness) run(p *prog) {
	for ; h.ops < fuzzMaxOps && !p.done(); h.ops++ {
		switch op := p.byte() % 6; op {
		case 0, 1:
			pk := p.packet(h.randoms())
			if !h.s.put(pk) {
				h.t.Fatalf("the link stopped reading")
			}
			h.model(pk)
		case 2:
			h.dial()
		case 3:
			if d := h.pick(p); d != nil && d.conn != nil && !d.closed {
				_, _ = d.conn.Write(p.bytes(int(p.byte())))
			}
		case 4:
			if d := h.pick(p); d != nil && d.conn != nil && !d.closed {
				h.sync()
				_ = d.conn.Close()
				d.closed = true
				if h.live[d.id] == d {
					delete(h.live, d.id)
				}
			}
		case 5:
			if d := h.pick(p); d != nil && d.conn != nil && !d.closed {
				h.readSome(d)
			}
		}
	}
}

// pick is a dial of the harness, or nil; a dial that returned is waited
// for, so that its connection is there.
func (h *serverHarness) pick(p *prog) *serverDial {
	i := int(p.byte())
	if len(h.dials) == 0 {
		return nil
	}
	d := h.dials[i%len(h.dials)]
	if d.answered {
		h.await(d)
	}
	return d
}

// sync waits until the link's reader is done with every packet put.
func (h *serverHarness) sync() {
	if !h.s.put(barrier) {
		h.t.Fatalf("the link stopped reading")
	}
}

// dial starts a dial and waits for its DIAL_REQ, whose random the agent's
// packets may then name.
func (h *serverHarness) dial() {
	if len(h.dials) == fuzzMaxDials {
		return
	}
	d := &serverDial{done: make(chan struct{})}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer close(d.done)
		d.conn, d.err = h.l.Dial(context.Background(), "10.0.0.1:443")
	}()
	deadline := time.Now().Add(fuzzWait)
	for {
		var reqs []int64
		for _, pk := range h.s.sentPackets() {
			if pk.Type == client.PacketType_DIAL_REQ {
				reqs = append(reqs, pk.GetDialRequest().GetRandom())
			}
		}
		if len(reqs) > len(h.dials) {
			d.random = reqs[len(h.dials)]
			break
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("Dial sent no DIAL_REQ")
		}
		time.Sleep(50 * time.Microsecond)
	}
	for _, o := range h.dials {
		if o.random == d.random || d.random == 0 {
			h.t.Fatalf("DIAL_REQ random %d: zero or used before", d.random)
		}
	}
	h.dials = append(h.dials, d)
}

// model applies a packet the link read, as the link must.
func (h *serverHarness) model(pk *client.Packet) {
	switch pk.Type {
	case client.PacketType_DIAL_RSP:
		r := pk.GetDialResponse()
		d := h.pending(r.GetRandom())
		if d == nil {
			return
		}
		d.answered = true
		if id := r.GetConnectID(); r.GetError() == "" && id != 0 && h.live[id] == nil {
			d.ok, d.id = true, id
			h.live[id] = d
		}
	case client.PacketType_DIAL_CLS:
		if d := h.pending(pk.GetCloseDial().GetRandom()); d != nil {
			d.answered = true
		}
	case client.PacketType_DATA:
		if d := h.live[pk.GetData().GetConnectID()]; d != nil {
			d.want = append(d.want, pk.GetData().GetData()...)
		}
	case client.PacketType_CLOSE_RSP, client.PacketType_CLOSE_REQ:
		id := pk.GetCloseResponse().GetConnectID()
		if pk.Type == client.PacketType_CLOSE_REQ {
			id = pk.GetCloseRequest().GetConnectID()
		}
		if d := h.live[id]; d != nil {
			d.ended = true
			delete(h.live, id)
		}
	case client.PacketType_DRAIN:
		h.drained = true
	}
}

func (h *serverHarness) pending(random int64) *serverDial {
	for _, d := range h.dials {
		if d.random == random && !d.answered {
			return d
		}
	}
	return nil
}

// await waits for an answered dial to return, and checks what it
// returned against the answer.
func (h *serverHarness) await(d *serverDial) {
	select {
	case <-d.done:
	case <-time.After(fuzzWait):
		h.t.Fatalf("dial %d answered, but Dial did not return\n%s", d.random, stacks())
	}
	if d.ok != (d.err == nil) {
		h.t.Fatalf("dial %d: answered with connectID %d, Dial returned %v, %v", d.random, d.id, d.conn, d.err)
	}
}

// readSome reads what has arrived, at most what the model expects.
func (h *serverHarness) readSome(d *serverDial) {
	h.sync()
	if len(d.want) == 0 {
		return
	}
	got, err := readExactly(d.conn, len(d.want))
	if !bytes.Equal(got, d.want[:len(got)]) || err != nil && !d.ended {
		h.t.Fatalf("connection %d read %q (%v), want %q", d.id, got, err, d.want)
	}
	d.want = d.want[len(got):]
}

func (h *serverHarness) finish() {
	h.sync()
	if h.drained != h.l.Draining() {
		h.t.Fatalf("DRAIN received: %v, Draining: %v", h.drained, h.l.Draining())
	}
	for _, d := range h.dials {
		if !d.ok || d.closed {
			continue
		}
		h.await(d)
		got, err := readExactly(d.conn, len(d.want))
		if !bytes.Equal(got, d.want) {
			h.t.Fatalf("connection %d read %q (%v), want %q", d.id, got, err, d.want)
		}
		if d.ended {
			rest, err := readEnd(d.conn)
			if len(rest) > 0 || err == nil || isTimeout(err) {
				h.t.Fatalf("connection %d, closed by the agent: read %q more, then %v", d.id, rest, err)
			}
		}
	}
	h.cancel() // the stream ends, as a gRPC stream does when the agent goes
	waitRun(h.t, h.runDone)
	h.wg.Wait() // every Dial returns once the link ended
	for _, d := range h.dials {
		if d.conn == nil {
			continue
		}
		if _, err := readEnd(d.conn); err == nil || isTimeout(err) {
			h.t.Fatalf("connection %d: read after the link ended: %v", d.id, err)
		}
		_ = d.conn.Close()
	}
	if n := len(h.s.sentPackets()); n > 3*h.ops+16 {
		h.t.Fatalf("the link sent %d packets for %d operations", n, h.ops)
	}
	if h.l.Active() != 0 {
		h.t.Fatalf("%d connections active after the link ended", h.l.Active())
	}
}
