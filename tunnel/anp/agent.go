package anp

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
)

// DefaultDialTimeout bounds a backend dial on the agent.
const DefaultDialTimeout = 10 * time.Second

// AgentOptions configure an AgentLink. Zero values take the defaults.
type AgentOptions struct {
	Log        *slog.Logger
	QueueBytes int // per-connection receive queue; 0 = DefaultQueueBytes
	// StallTimeout: how long a full queue's reader may take no data before
	// its connection is closed; 0 = DefaultStallTimeout, negative = at once.
	StallTimeout time.Duration
	DialTimeout  time.Duration // 0 = DefaultDialTimeout
	// OnSplice, if set, is told the bytes moved when a connection ends.
	OnSplice func(address string, r splice.Result)
	// OnDial, if set, observes every backend dial: its reason ("" on
	// success) and how long it took.
	OnDial func(reason link.Reason, took time.Duration)
}

// AgentLink is the proxy-agent's end of one /AgentService/Connect stream: it
// serves the server's dial requests with a DialFunc and splices each dialed
// backend to its tunneled connection.
type AgentLink struct {
	ep   *endpoint
	dial link.DialFunc
	opts AgentOptions

	mu     sync.Mutex
	nextID int64
	dials  map[int64]context.CancelFunc // pending dials by random
	wg     sync.WaitGroup               // dials and splices
}

// NewAgentLink wraps an established agent stream (headers already read).
func NewAgentLink(s Stream, dial link.DialFunc, o AgentOptions) *AgentLink {
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	return &AgentLink{
		ep:    newEndpoint(s, o.Log, o.QueueBytes, o.StallTimeout, func(id int64) *client.Packet { return closeRsp(id, "") }),
		dial:  dial,
		opts:  o,
		dials: make(map[int64]context.CancelFunc),
	}
}

// Done is closed when the link has ended.
func (l *AgentLink) Done() <-chan struct{} { return l.ep.done }

// Active is the number of live tunneled connections.
func (l *AgentLink) Active() int { return l.ep.active() }

// Drain tells the server to prefer other agents for new dials.
func (l *AgentLink) Drain() error { return l.ep.send(drain()) }

// Run serves the stream until it or ctx ends. On return every dial has been
// cancelled and every connection closed and finished.
func (l *AgentLink) Run(ctx context.Context) error {
	go l.ep.runControl()
	readErr := make(chan error, 1)
	go func() { readErr <- l.readLoop(ctx) }()
	var err error
	select {
	case err = <-readErr:
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	l.ep.shutdown(err)
	l.mu.Lock()
	for r, cancel := range l.dials {
		cancel()
		delete(l.dials, r)
	}
	l.mu.Unlock()
	l.wg.Wait()
	return err
}

func (l *AgentLink) readLoop(ctx context.Context) error {
	for {
		p, err := l.ep.stream.Recv()
		if err != nil {
			return err
		}
		switch p.Type {
		case client.PacketType_DIAL_REQ:
			r := p.GetDialRequest()
			l.startDial(ctx, r.GetRandom(), r.GetProtocol(), r.GetAddress())
		case client.PacketType_DIAL_CLS:
			random := p.GetCloseDial().GetRandom()
			l.mu.Lock()
			cancel, ok := l.dials[random]
			delete(l.dials, random)
			l.mu.Unlock()
			if ok {
				cancel()
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

// closeDrainTimeout bounds how long the agent keeps writing data queued
// for a backend after the server closed the connection.
const closeDrainTimeout = 10 * time.Second

func (l *AgentLink) startDial(ctx context.Context, random int64, protocol, address string) {
	log := l.ep.log.With("dial", random, "address", address)
	if protocol != "tcp" {
		l.ep.sendLater(dialRsp(random, 0, fmt.Sprintf("protocol %q not supported", protocol)))
		return
	}
	dctx, cancel := context.WithTimeout(ctx, l.opts.DialTimeout)
	l.mu.Lock()
	select {
	case <-l.ep.done:
		l.mu.Unlock()
		cancel()
		return
	default:
	}
	if _, dup := l.dials[random]; dup {
		l.mu.Unlock()
		cancel()
		log.Warn("duplicate dial request ignored")
		return
	}
	l.dials[random] = cancel
	l.wg.Add(1)
	l.mu.Unlock()

	go func() {
		defer l.wg.Done()
		defer cancel()
		start := time.Now()
		backend, err := l.dial(dctx, address)
		if l.opts.OnDial != nil {
			l.opts.OnDial(link.Classify(err), time.Since(start))
		}
		l.mu.Lock()
		_, still := l.dials[random]
		delete(l.dials, random)
		var c *conn
		if err == nil && still {
			l.nextID++
			c = l.ep.newConn(l.nextID, address)
			// The server closed: the backend still gets what was queued
			// for it (EOF from a conn without half-close ends the splice
			// after the copy), within a bound.
			c.onPeerClose = func() { _ = backend.SetWriteDeadline(time.Now().Add(closeDrainTimeout)) }
			if aerr := l.ep.add(c); aerr != nil {
				c, err = nil, aerr
			}
		}
		l.mu.Unlock()
		cancel() // dctx bounds the dial only: its timer goes now, not with the connection
		switch {
		case !still:
			if backend != nil {
				_ = backend.Close()
			}
			log.Debug("dial abandoned: cancelled by the server or the link ended")
			return
		case err != nil:
			if backend != nil {
				_ = backend.Close()
			}
			log.Info("backend dial failed", "reason", link.Classify(err), "err", err, "took", time.Since(start))
			_ = l.ep.send(dialRsp(random, 0, err.Error()))
			return
		}
		if err := l.ep.send(dialRsp(random, c.id, "")); err != nil {
			_ = c.Close()
			_ = backend.Close()
			return
		}
		log.Debug("backend connected", "conn", c.id, "took", time.Since(start))
		res := splice.Splice(c, backend)
		if l.opts.OnSplice != nil {
			l.opts.OnSplice(address, res)
		}
		log.Debug("connection finished", "conn", c.id, "toBackend", res.AtoB, "fromBackend", res.BtoA, "err", res.Err)
	}()
}
