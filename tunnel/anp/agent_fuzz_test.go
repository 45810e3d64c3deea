package anp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime"
	"testing"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/link"
)

// FuzzAgentLink plays a server, from the fuzz input, against an AgentLink
// whose agent takes requests and accepts or refuses them: any packets, in
// any order, with any payload. The link never panics, deadlocks or leaks
// a goroutine; its packets stay in proportion to the input; a request it
// gives out cancelled cannot be accepted, and one accepted answers
// DIAL_RSP with a connectID no live connection has; and each connection
// reads exactly the bytes the server sent for it, in order, then EOF once
// the server closed it.
func FuzzAgentLink(f *testing.F) {
	for _, s := range [][]byte{
		{},
		// DIAL_REQ{tcp, random 1}; take; accept; DATA{1, "hi"}; read; CLOSE_REQ{1}
		{0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 4, 0, 2, 2, 'h', 'i', 6, 0, 0, 2, 0, 2},
		// DIAL_REQ; DIAL_CLS; take; accept (cancelled); DIAL_REQ udp; duplicate randoms
		{0, 0, 0, 0, 0, 9, 0, 5, 0, 9, 2, 3, 0, 0, 0, 0, 0, 2, 0, 7, 0, 0, 0, 0, 7, 0, 0, 0, 0, 7},
		// accept, write, close; DATA for unknown ids; refusal
		{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 2, 2, 3, 0, 0, 3, 0, 1, 4, 0, 3, 'a', 'b', 'c', 5, 0, 0, 4, 0, 5, 1, 'z'},
		// packets of unknown type and with payloads of other types
		{0, 7, 0x81, 1, 0, 0, 0, 4, 0x80, 0, 0, 0, 1, 0, 2, 0x83, 1, 0, 0, 3, 0x82, 1},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base := runtime.NumGoroutine()
		h := newAgentHarness(t)
		h.run(&prog{b: data})
		h.finish()
		checkNoLeak(t, base)
	})
}

// agentConn is a connection the harness accepted, and what the server's
// packets made of it (the model).
type agentConn struct {
	conn    net.Conn
	backend net.Conn // the far end of the backend the request was accepted with
	far     net.Conn
	id      int64
	want    []byte // what the server sent on it, not read yet
	ended   bool   // the server closed it
	closed  bool   // the harness closed it
}

type agentHarness struct {
	t       *testing.T
	s       *memStream
	l       *AgentLink
	cancel  context.CancelFunc
	runDone chan error
	taken   []link.Request // taken by Accept, not answered
	conns   []*agentConn
	live    map[int64]*agentConn // by connectID
	ops     int
}

// fuzzPendingDials is small, so that inputs reach the bound.
const fuzzPendingDials = 4

func newAgentHarness(t *testing.T) *agentHarness {
	ctx, cancel := context.WithCancel(context.Background())
	h := &agentHarness{t: t, s: newMemStream(ctx), cancel: cancel, runDone: make(chan error, 1), live: map[int64]*agentConn{}}
	h.l = NewAgentLink(h.s, AgentOptions{QueueBytes: 1 << 20, PendingDials: fuzzPendingDials})
	go func() { h.runDone <- h.l.Run(context.Background()) }()
	return h
}

func (h *agentHarness) run(p *prog) {
	for ; h.ops < fuzzMaxOps && !p.done(); h.ops++ {
		switch op := p.byte() % 7; op {
		case 0, 1:
			pk := p.packet(nil)
			if !h.s.put(pk) {
				h.t.Fatalf("the link stopped reading")
			}
			h.model(pk)
		case 2:
			h.take()
		case 3:
			h.answer(p)
		case 4:
			if c := h.pick(p); c != nil && !c.closed {
				_, _ = c.conn.Write(p.bytes(int(p.byte())))
			}
		case 5:
			if c := h.pick(p); c != nil && !c.closed {
				h.sync()
				_ = c.conn.Close()
				c.closed = true
				if h.live[c.id] == c {
					delete(h.live, c.id)
				}
			}
		case 6:
			if c := h.pick(p); c != nil && !c.closed {
				h.readSome(c)
			}
		}
	}
}

func (h *agentHarness) sync() {
	if !h.s.put(barrier) {
		h.t.Fatalf("the link stopped reading")
	}
}

func (h *agentHarness) pick(p *prog) *agentConn {
	i := int(p.byte())
	if len(h.conns) == 0 {
		return nil
	}
	return h.conns[i%len(h.conns)]
}

// take takes the next request, if one is queued.
func (h *agentHarness) take() {
	if len(h.taken) == fuzzMaxDials {
		return
	}
	h.sync()
	if len(h.l.reqs) == 0 { // Accept would wait
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), fuzzWait)
	defer cancel()
	r, err := h.l.Accept(ctx)
	if err != nil {
		h.t.Fatalf("a request is queued, Accept: %v", err)
	}
	h.taken = append(h.taken, r)
}

// answer accepts or refuses a request taken.
func (h *agentHarness) answer(p *prog) {
	how, i := p.byte(), int(p.byte())
	if len(h.taken) == 0 {
		return
	}
	i %= len(h.taken)
	r := h.taken[i]
	h.taken = append(h.taken[:i], h.taken[i+1:]...)
	h.sync()
	if how%3 == 2 {
		r.Refuse(link.ReasonRefused, errors.New("connection refused"))
		return
	}
	cancelled := r.Context().Err() != nil
	backend, far := net.Pipe()
	c, err := r.Accept(backend)
	if err != nil {
		_, _ = backend.Close(), far.Close()
		if !cancelled && !errors.Is(err, link.ErrDialCancelled) && !errors.Is(err, link.ErrLinkClosed) {
			h.t.Fatalf("accepting request %s: %v", r.Address(), err)
		}
		return
	}
	if cancelled {
		h.t.Fatalf("a request cancelled (%v) was accepted", context.Cause(r.Context()))
	}
	ac := &agentConn{conn: c, backend: backend, far: far, id: c.(*conn).id}
	if h.live[ac.id] != nil {
		h.t.Fatalf("connectID %d given twice", ac.id)
	}
	req := r.(*request)
	if !h.answered(req.random, ac.id) {
		h.t.Fatalf("request %d accepted as connection %d, but no DIAL_RSP says so", req.random, ac.id)
	}
	h.conns = append(h.conns, ac)
	h.live[ac.id] = ac
}

// answered reports whether the link sent DIAL_RSP{random, id}.
func (h *agentHarness) answered(random, id int64) bool {
	for _, pk := range h.s.sentPackets() {
		if r := pk.GetDialResponse(); pk.Type == client.PacketType_DIAL_RSP && r.GetRandom() == random && r.GetConnectID() == id && r.GetError() == "" {
			return true
		}
	}
	return false
}

// model applies a packet the link read, as the link must.
func (h *agentHarness) model(pk *client.Packet) {
	switch pk.Type {
	case client.PacketType_DATA:
		if c := h.live[pk.GetData().GetConnectID()]; c != nil {
			c.want = append(c.want, pk.GetData().GetData()...)
		}
	case client.PacketType_CLOSE_REQ:
		if c := h.live[pk.GetCloseRequest().GetConnectID()]; c != nil {
			c.ended = true
			delete(h.live, c.id)
		}
	}
}

func (h *agentHarness) readSome(c *agentConn) {
	h.sync()
	if len(c.want) == 0 {
		return
	}
	got, err := readExactly(c.conn, len(c.want))
	if !bytes.Equal(got, c.want[:len(got)]) || err != nil {
		h.t.Fatalf("connection %d read %q (%v), want %q", c.id, got, err, c.want)
	}
	c.want = c.want[len(got):]
}

func (h *agentHarness) finish() {
	h.sync()
	for _, c := range h.conns {
		if c.closed {
			continue
		}
		got, err := readExactly(c.conn, len(c.want))
		if !bytes.Equal(got, c.want) {
			h.t.Fatalf("connection %d read %q (%v), want %q", c.id, got, err, c.want)
		}
		if c.ended {
			if rest, err := readEnd(c.conn); len(rest) > 0 || err == nil || isTimeout(err) {
				h.t.Fatalf("connection %d, closed by the server: read %q more, then %v", c.id, rest, err)
			}
		}
	}
	h.cancel()
	waitRun(h.t, h.runDone)
	for _, r := range h.taken {
		if r.Context().Err() == nil {
			h.t.Fatalf("request %s still open after the link ended", r.Address())
		}
	}
	for _, c := range h.conns {
		if _, err := readEnd(c.conn); err == nil || isTimeout(err) {
			h.t.Fatalf("connection %d: read after the link ended: %v", c.id, err)
		}
		_, _, _ = c.conn.Close(), c.backend.Close(), c.far.Close()
	}
	if n := len(h.s.sentPackets()); n > 3*h.ops+16 {
		h.t.Fatalf("the link sent %d packets for %d operations", n, h.ops)
	}
	if h.l.Active() != 0 {
		h.t.Fatalf("%d connections active after the link ended", h.l.Active())
	}
}
