package anp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/link"
)

// ServerLink is the proxy-server's end of one agent's /AgentService/Connect
// stream. It implements link.Dialer.
type ServerLink struct {
	ep       *endpoint
	agentID  string
	draining atomic.Bool

	mu      sync.Mutex
	pending map[int64]chan dialResult // by random
}

type dialResult struct {
	c   *conn
	err error
}

// ServerOptions configure a ServerLink. Zero values take the defaults.
type ServerOptions struct {
	AgentID    string
	Log        *slog.Logger
	QueueBytes int // per-connection receive queue; 0 = DefaultQueueBytes
	// StallTimeout: how long a full queue's reader may take no data before
	// its connection is closed; 0 = DefaultStallTimeout, negative = at once.
	StallTimeout time.Duration
	// Observer, if set, sees every packet and stream error.
	Observer Observer
}

// NewServerLink wraps an accepted agent stream. Call Run to serve it.
func NewServerLink(s Stream, o ServerOptions) *ServerLink {
	return &ServerLink{
		ep:      newEndpoint(s, o.Log, o.QueueBytes, o.StallTimeout, o.Observer, func(id int64) *client.Packet { return closeReq(id) }),
		agentID: o.AgentID,
		pending: make(map[int64]chan dialResult),
	}
}

// Run reads the agent's packets until the stream or ctx ends, then fails
// every connection and pending dial. It returns the reason the link ended.
func (l *ServerLink) Run(ctx context.Context) error {
	go l.ep.runControl()
	readErr := make(chan error, 1)
	go func() { readErr <- l.readLoop() }()
	var err error
	select {
	case err = <-readErr:
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	l.shutdown(err)
	return err
}

// Done is closed when the link has ended.
func (l *ServerLink) Done() <-chan struct{} { return l.ep.done }

// Draining reports whether the agent asked to be drained.
func (l *ServerLink) Draining() bool { return l.draining.Load() }

// Active is the number of live tunneled connections.
func (l *ServerLink) Active() int { return l.ep.active() }

func (l *ServerLink) shutdown(err error) {
	l.ep.shutdown(err)
	l.mu.Lock()
	pending := l.pending
	l.pending = map[int64]chan dialResult{}
	l.mu.Unlock()
	for _, ch := range pending {
		ch <- dialResult{err: link.ErrLinkClosed}
	}
}

func (l *ServerLink) readLoop() error {
	for {
		p, err := l.ep.recv()
		if err != nil {
			return err
		}
		switch p.Type {
		case client.PacketType_DIAL_RSP:
			l.onDialRsp(p.GetDialResponse())
		case client.PacketType_DATA:
			d := p.GetData()
			l.ep.deliver(d.GetConnectID(), d.GetData())
		case client.PacketType_CLOSE_RSP, client.PacketType_CLOSE_REQ:
			// CLOSE_RSP answers our CLOSE_REQ or says the backend closed;
			// with an error, the agent cut the connection or lost it.
			// Upstream agents never send CLOSE_REQ; treat it the same.
			id, cut := p.GetCloseResponse().GetConnectID(), p.GetCloseResponse().GetError()
			if p.Type == client.PacketType_CLOSE_REQ {
				id = p.GetCloseRequest().GetConnectID()
			}
			switch c := l.ep.take(id); {
			case c == nil:
			case cut != "":
				c.peerCut(cut)
			default:
				c.peerClosed()
			}
		case client.PacketType_DIAL_CLS:
			l.failPending(p.GetCloseDial().GetRandom(), errors.New("dial closed by agent"))
		case client.PacketType_DRAIN:
			if !l.draining.Swap(true) {
				l.ep.log.Info("agent is draining; new dials go to other agents")
			}
		default:
			l.ep.log.Debug("ignoring unexpected packet from agent", "type", p.Type.String())
		}
	}
}

func (l *ServerLink) onDialRsp(r *client.DialResponse) {
	l.mu.Lock()
	ch, ok := l.pending[r.GetRandom()]
	delete(l.pending, r.GetRandom())
	l.mu.Unlock()
	if !ok {
		// Nobody waits (the dial was cancelled): close what the agent opened.
		if r.GetConnectID() != 0 && r.GetError() == "" {
			l.ep.sendLater(closeReq(r.GetConnectID()))
		}
		return
	}
	switch {
	case r.GetError() != "":
		ch <- dialResult{err: &link.DialError{Reason: reasonFromWire(r.GetError()), Err: errors.New(r.GetError())}}
	case r.GetConnectID() == 0:
		ch <- dialResult{err: &link.DialError{Reason: link.ReasonError, Err: errors.New("agent answered with connectID 0")}}
	default:
		c := l.ep.newConn(r.GetConnectID(), "")
		if err := l.ep.add(c); err != nil {
			l.ep.sendLater(closeReq(r.GetConnectID()))
			ch <- dialResult{err: &link.DialError{Reason: link.ReasonError, Err: err}}
			return
		}
		ch <- dialResult{c: c}
	}
}

func (l *ServerLink) failPending(random int64, err error) {
	l.mu.Lock()
	ch, ok := l.pending[random]
	delete(l.pending, random)
	l.mu.Unlock()
	if ok {
		ch <- dialResult{err: &link.DialError{Reason: link.ReasonError, Err: err}}
	}
}

// Dial asks the agent to dial address. ctx bounds the dial: when it ends
// first, the agent gets DIAL_CLS and a late answer is closed.
func (l *ServerLink) Dial(ctx context.Context, address string) (net.Conn, error) {
	fail := func(r link.Reason, err error) error {
		return &link.DialError{Address: address, Agent: l.agentID, Reason: r, Err: err}
	}
	ch := make(chan dialResult, 1)
	var random int64
	l.mu.Lock()
	select {
	case <-l.ep.done:
		l.mu.Unlock()
		return nil, fail(link.ReasonLinkClosed, link.ErrLinkClosed)
	default:
	}
	for {
		random = rand.Int64()
		if _, used := l.pending[random]; !used && random != 0 {
			break
		}
	}
	l.pending[random] = ch
	l.mu.Unlock()

	if err := l.ep.send(dialReq(random, address)); err != nil {
		l.failPending(random, err)
		<-ch
		return nil, fail(link.ReasonLinkClosed, err)
	}
	select {
	case res := <-ch:
		return l.result(res, address)
	case <-ctx.Done():
		l.mu.Lock()
		_, still := l.pending[random]
		delete(l.pending, random)
		l.mu.Unlock()
		if !still { // the answer raced the deadline: take it
			return l.result(<-ch, address)
		}
		l.ep.sendLater(dialCls(random))
		r := link.ReasonCancelled
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			r = link.ReasonTimeout
		}
		return nil, fail(r, fmt.Errorf("no answer from agent: %w", ctx.Err()))
	}
}

func (l *ServerLink) result(res dialResult, address string) (net.Conn, error) {
	if res.err != nil {
		var de *link.DialError
		if errors.As(res.err, &de) {
			de.Address, de.Agent = address, l.agentID
			return nil, de
		}
		return nil, &link.DialError{Address: address, Agent: l.agentID, Reason: link.ReasonOf(res.err), Err: res.err}
	}
	res.c.remote = addr{address}
	return res.c, nil
}
