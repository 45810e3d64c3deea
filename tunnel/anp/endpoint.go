package anp

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/link"
)

// DefaultQueueBytes is the default per-connection receive queue.
const DefaultQueueBytes = 16 << 20

// DefaultStallTimeout is how long the link's reader waits for a full
// connection's reader to take data before it closes that connection. The
// ANP wire has no flow control: a reader slower than its sender throttles
// the whole link (as upstream does), but a reader that stops for longer than
// this is cut, so the other connections of the link wait at most this long.
const DefaultStallTimeout = 50 * time.Millisecond

// endpoint is what the server and agent sides of an ANP link share: the
// stream, the send lock, the live connections and the control sender.
type endpoint struct {
	stream     Stream
	obs        Observer
	log        *slog.Logger
	queueLimit int
	stall      time.Duration
	// closePacket is what this side sends when it closes a connection first.
	closePacket func(id int64) *client.Packet

	sendMu sync.Mutex // gRPC streams allow one sender at a time

	mu      sync.Mutex
	conns   map[int64]*conn
	dead    error // set when the link ended
	ctrl    []*client.Packet
	ctrlSig chan struct{}
	done    chan struct{}
}

func newEndpoint(s Stream, log *slog.Logger, queueLimit int, stall time.Duration, obs Observer, closePacket func(int64) *client.Packet) *endpoint {
	if queueLimit <= 0 {
		queueLimit = DefaultQueueBytes
	}
	if stall == 0 {
		stall = DefaultStallTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if obs == nil {
		obs = noObserver{}
	}
	return &endpoint{
		stream:      s,
		obs:         obs,
		log:         log,
		queueLimit:  queueLimit,
		stall:       stall,
		closePacket: closePacket,
		conns:       make(map[int64]*conn),
		ctrlSig:     make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
}

func (e *endpoint) send(p *client.Packet) error {
	select {
	case <-e.done:
		return link.ErrLinkClosed
	default:
	}
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	if err := e.stream.Send(p); err != nil {
		e.obs.StreamError(true, p.Type, err)
		return fmt.Errorf("%w: send %s: %w", link.ErrLinkClosed, p.Type, err)
	}
	e.obs.Packet(true, p.Type)
	return nil
}

// recv reads the peer's next packet.
func (e *endpoint) recv() (*client.Packet, error) {
	p, err := e.stream.Recv()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			e.obs.StreamError(false, client.PacketType(-1), err)
		}
		return nil, err
	}
	e.obs.Packet(false, p.Type)
	return p, nil
}

// Observer sees the packets of an ANP link, for ANP's stream_packets_total
// and stream_errors_total metrics. It is called on the link's hot path: it
// must not block. sent is true for packets this side sent. A receive error
// has no packet type: t is then -1.
type Observer interface {
	Packet(sent bool, t client.PacketType)
	StreamError(sent bool, t client.PacketType, err error)
	// Stalled: a connection was closed alone because its reader took no
	// data for the stall timeout with its receive queue full.
	Stalled()
}

type noObserver struct{}

func (noObserver) Packet(bool, client.PacketType)             {}
func (noObserver) StreamError(bool, client.PacketType, error) {}
func (noObserver) Stalled()                                   {}

// sendLater queues a control packet for the control sender, so that the
// reader never blocks on a send (two readers blocked on sends to each other
// would deadlock on gRPC flow control).
func (e *endpoint) sendLater(p *client.Packet) {
	e.mu.Lock()
	if e.dead == nil {
		e.ctrl = append(e.ctrl, p)
	}
	e.mu.Unlock()
	select {
	case e.ctrlSig <- struct{}{}:
	default:
	}
}

// runControl sends queued control packets until the link ends.
func (e *endpoint) runControl() {
	for {
		select {
		case <-e.done:
			return
		case <-e.ctrlSig:
		}
		e.mu.Lock()
		batch := e.ctrl
		e.ctrl = nil
		e.mu.Unlock()
		for _, p := range batch {
			if err := e.send(p); err != nil {
				return
			}
		}
	}
}

func (e *endpoint) newConn(id int64, remote string) *conn {
	return &conn{ep: e, id: id, q: newQueue(e.queueLimit), local: addr{"proxy"}, remote: addr{remote}}
}

// add registers c; it fails when the link is dead or the id is in use.
func (e *endpoint) add(c *conn) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.dead != nil {
		return e.dead
	}
	if _, dup := e.conns[c.id]; dup {
		return fmt.Errorf("connectID %d already in use", c.id)
	}
	e.conns[c.id] = c
	return nil
}

func (e *endpoint) get(id int64) *conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.conns[id]
}

// take removes and returns the conn with id, if any.
func (e *endpoint) take(id int64) *conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.conns[id]
	delete(e.conns, id)
	return c
}

// cutText is the CLOSE_RSP error of a connection the agent cut.
const cutText = "connection cut on the agent: its backend connection failed"

// release forgets c after a local Close and tells the peer if asked; a
// cut is said where the wire can say it (CLOSE_RSP's error, from the agent;
// CLOSE_REQ has no field for it).
func (e *endpoint) release(c *conn, tell, cut bool) {
	e.mu.Lock()
	if e.conns[c.id] == c {
		delete(e.conns, c.id)
	}
	dead := e.dead != nil
	e.mu.Unlock()
	if tell && !dead {
		p := e.closePacket(c.id)
		if r := p.GetCloseResponse(); r != nil && cut {
			r.Error = cutText
		}
		e.sendLater(p)
	}
}

// deliver hands DATA to its connection. When the connection's reader
// stalls with its queue full, that connection alone is closed; data for
// unknown ids (already closed) is dropped.
func (e *endpoint) deliver(id int64, b []byte) (known bool) {
	c := e.get(id)
	if c == nil {
		return false
	}
	if !c.q.push(b, e.stall, e.done) {
		e.obs.Stalled()
		e.log.Warn("closing connection: its reader stalled with a full receive queue (the ANP wire has no flow control)",
			"conn", id, "queueBytes", e.queueLimit, "stall", e.stall)
		c.closeRemote(fmt.Errorf("connection %d: %w (%d bytes queued, reader stalled %v)", id, link.ErrQueueOverflow, e.queueLimit, e.stall), false)
		e.release(c, true, false)
	}
	return true
}

// shutdown ends the link: every connection fails with err, after the data
// that did arrive.
func (e *endpoint) shutdown(err error) {
	if err == nil || errors.Is(err, io.EOF) {
		err = link.ErrLinkClosed
	} else if !errors.Is(err, link.ErrLinkClosed) {
		err = fmt.Errorf("%w: %w", link.ErrLinkClosed, err)
	}
	e.mu.Lock()
	if e.dead != nil {
		e.mu.Unlock()
		return
	}
	e.dead = err
	conns := e.conns
	e.conns = map[int64]*conn{}
	e.ctrl = nil
	close(e.done)
	e.mu.Unlock()
	for _, c := range conns {
		c.closeRemote(err, true)
	}
}

func (e *endpoint) active() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.conns)
}
