package anp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
)

// DefaultDialTimeout bounds a backend dial on the agent.
const DefaultDialTimeout = 10 * time.Second

// DefaultPendingDials bounds the dial requests in flight on an agent link
// (AgentOptions.PendingDials).
const DefaultPendingDials = link.DefaultPendingDials

// AgentOptions configure an AgentLink. Zero values take the defaults.
type AgentOptions struct {
	Log        *slog.Logger
	QueueBytes int // per-connection receive queue; 0 = DefaultQueueBytes
	// StallTimeout: how long a full queue's reader may take no data before
	// its connection is closed; 0 = DefaultStallTimeout, negative = at once.
	StallTimeout time.Duration
	// PendingDials bounds the dial requests in flight: received and not
	// yet answered (waiting for Accept, or taken and dialing). Beyond it a
	// DIAL_REQ is refused at once with link.BusyText (the link's reader
	// never blocks); 0 = DefaultPendingDials.
	PendingDials int
	// OnBusy, if set, is called with the address of every dial refused by
	// PendingDials, on the link's reader: it must not block.
	OnBusy func(address string)
	// Observer, if set, sees every packet and stream error.
	Observer Observer
}

// AgentLink is the proxy-agent's end of one /AgentService/Connect stream: a
// link.Acceptor of the server's DIAL_REQs.
type AgentLink struct {
	ep      *endpoint
	reqs    chan *request
	pending int // PendingDials
	onBusy  func(address string)

	mu     sync.Mutex
	nextID int64
	dials  map[int64]*request // by random: taken or queued, not yet answered (at most pending)
}

// NewAgentLink wraps an established agent stream (headers already read).
func NewAgentLink(s Stream, o AgentOptions) *AgentLink {
	if o.PendingDials <= 0 {
		o.PendingDials = DefaultPendingDials
	}
	return &AgentLink{
		ep:      newEndpoint(s, o.Log, o.QueueBytes, o.StallTimeout, o.Observer, func(id int64) *client.Packet { return closeRsp(id, "") }),
		reqs:    make(chan *request, o.PendingDials),
		pending: o.PendingDials,
		onBusy:  o.OnBusy,
		dials:   make(map[int64]*request),
	}
}

// Done is closed when the link has ended.
func (l *AgentLink) Done() <-chan struct{} { return l.ep.done }

// Active is the number of live tunneled connections.
func (l *AgentLink) Active() int { return l.ep.active() }

// Drain tells the server to prefer other agents for new dials.
func (l *AgentLink) Drain() error { return l.ep.send(drain()) }

// Accept returns the server's next dial request.
func (l *AgentLink) Accept(ctx context.Context) (link.Request, error) {
	select {
	case r := <-l.reqs:
		return r, nil
	case <-l.ep.done:
		return nil, link.ErrLinkClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Run serves the stream until it or ctx ends. Then every connection is
// closed and every unanswered request cancelled.
func (l *AgentLink) Run(ctx context.Context) error {
	go l.ep.runControl()
	readErr := make(chan error, 1)
	go func() { readErr <- l.readLoop() }()
	var err error
	select {
	case err = <-readErr:
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	l.ep.shutdown(err)
	l.mu.Lock()
	for random, r := range l.dials {
		r.cancel()
		delete(l.dials, random)
	}
	l.mu.Unlock()
	return err
}

func (l *AgentLink) readLoop() error {
	for {
		p, err := l.ep.recv()
		if err != nil {
			return err
		}
		switch p.Type {
		case client.PacketType_DIAL_REQ:
			r := p.GetDialRequest()
			l.onDialReq(r.GetRandom(), r.GetProtocol(), r.GetAddress())
		case client.PacketType_DIAL_CLS:
			random := p.GetCloseDial().GetRandom()
			l.mu.Lock()
			r, ok := l.dials[random]
			delete(l.dials, random)
			l.mu.Unlock()
			if ok {
				r.cancel()
				l.ep.log.Debug("dial cancelled by server", "dial", random)
			}
		case client.PacketType_DATA:
			d := p.GetData()
			if !l.ep.deliver(d.GetConnectID(), d.GetData()) {
				// Unknown id: tell the server it is gone, as upstream does.
				l.ep.sendLater(closeRsp(d.GetConnectID(), "unknown connectID"))
			}
		case client.PacketType_CLOSE_REQ:
			id := p.GetCloseRequest().GetConnectID()
			if c := l.ep.take(id); c != nil {
				c.peerClosed()
			}
			l.ep.sendLater(closeRsp(id, ""))
		default:
			l.ep.log.Debug("ignoring unexpected packet from server", "type", p.Type.String())
		}
	}
}

// onDialReq queues a dial request for Accept, or refuses it at once. It
// never blocks: it runs on the link's reader.
func (l *AgentLink) onDialReq(random int64, protocol, address string) {
	if protocol != "tcp" {
		l.ep.sendLater(dialRsp(random, 0, fmt.Sprintf("protocol %q not supported", limits.Clip(protocol))))
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &request{l: l, random: random, address: address, ctx: ctx, cancel: cancel}
	l.mu.Lock()
	if _, dup := l.dials[random]; dup {
		l.mu.Unlock()
		cancel()
		l.ep.log.Warn("duplicate dial request ignored", "dial", random, "address", limits.Clip(address))
		return
	}
	// Every request in dials is in flight. The queue is as long as the
	// bound, but may still hold cancelled requests Accept has not taken:
	// a full queue refuses too, never blocks.
	queued := false
	if len(l.dials) < l.pending {
		select {
		case l.reqs <- r:
			l.dials[random] = r
			queued = true
		default:
		}
	}
	l.mu.Unlock()
	if !queued {
		cancel()
		if l.onBusy != nil { // counted before the refusal leaves
			l.onBusy(address)
		}
		l.ep.sendLater(dialRsp(random, 0, link.BusyText(l.pending)))
	}
}

// closeDrainTimeout bounds how long the agent keeps writing data queued
// for a backend after the server closed the connection.
const closeDrainTimeout = 10 * time.Second

// request is one DIAL_REQ; it implements link.Request.
type request struct {
	l       *AgentLink
	random  int64
	address string
	ctx     context.Context
	cancel  context.CancelFunc
}

func (r *request) Address() string          { return r.address }
func (r *request) Context() context.Context { return r.ctx }

// take removes r from the pending dials; false when it was cancelled (by
// DIAL_CLS or the link's end) or already answered.
func (r *request) take() bool {
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	if r.l.dials[r.random] != r {
		return false
	}
	delete(r.l.dials, r.random)
	r.cancel()
	return true
}

func (r *request) Accept(backend net.Conn) (net.Conn, error) {
	l := r.l
	l.mu.Lock()
	if l.dials[r.random] != r {
		l.mu.Unlock()
		return nil, link.ErrDialCancelled
	}
	delete(l.dials, r.random)
	r.cancel()
	l.nextID++
	c := l.ep.newConn(l.nextID, r.address)
	// The server closed: the backend still gets what was queued for it
	// (EOF from a conn without half-close ends the splice after the copy),
	// within a bound.
	c.onPeerClose = func() { _ = backend.SetWriteDeadline(time.Now().Add(closeDrainTimeout)) }
	err := l.ep.add(c)
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := l.ep.send(dialRsp(r.random, c.id, "")); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

func (r *request) Refuse(reason link.Reason, err error) {
	if !r.take() {
		return
	}
	if serr := r.l.ep.send(dialRsp(r.random, 0, refusalText(reason, err))); serr != nil && !errors.Is(serr, link.ErrLinkClosed) {
		r.l.ep.log.Debug("could not send a dial refusal", "dial", r.random, "err", serr)
	}
}
