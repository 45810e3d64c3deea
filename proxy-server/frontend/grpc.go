package frontend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
)

// GRPC serves /ProxyService/Proxy: one tunneled connection per stream, as
// konnectivity-client's CreateSingleUseGrpcTunnel and CreateGRPCTunnel use it.
//
// Flow on a stream: DIAL_REQ{random} in; the dial runs while the stream is
// watched for DIAL_CLS or the client going away; DIAL_RSP{random, connectID}
// out; then DATA both ways until CLOSE_REQ (answered with CLOSE_RSP) or the
// backend ends (CLOSE_RSP sent); then the stream ends.
type GRPC struct {
	client.UnimplementedProxyServiceServer

	Dialer      Dialer
	DialTimeout time.Duration // 0 = DefaultDialTimeout
	// MaxPendingPerClient bounds the dials one client (clientOfStream) may
	// have waiting for an agent's answer (0 = DefaultMaxPendingPerClient);
	// more are answered with a DIAL_RSP error at once.
	MaxPendingPerClient int
	Log                 *slog.Logger
	Limits              *limits.Hits // counts and logs the bounds hit; nil: logs only
	Tracker             *Tracker     // optional
	// OnDial, if set, observes every dial: its reason ("" on success) and time.
	OnDial func(frontend string, reason link.Reason, took time.Duration)
	// Observer, if set, sees every packet and stream error of the client
	// streams (sent: to the client), for ANP's stream_packets_total and
	// stream_errors_total.
	Observer anp.Observer

	nextID  atomic.Int64 // the connectIDs we hand to clients; never 0
	clients clientLimit
}

// Register adds the service to s.
func (g *GRPC) Register(s *grpc.Server) {
	if g.Limits == nil { // still log, rate limited
		g.Limits, _ = limits.New(limits.Config{Log: g.Log})
	}
	client.RegisterProxyServiceServer(s, g)
}

// dataBufs hold what one DATA packet to a client carries. Fewer, larger
// packets cost konnectivity-client (one channel send per packet) less; 256 KiB
// stays far below the 4 MiB a gRPC client accepts by default.
var dataBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

type recvResult struct {
	p   *client.Packet
	err error
}

type dialResult struct {
	c   net.Conn
	err error
}

// Proxy serves one client stream.
func (g *GRPC) Proxy(stream client.ProxyService_ProxyServer) error {
	if g.Tracker != nil {
		defer g.Tracker.Add()()
	}
	if g.Observer != nil {
		stream = observed{stream, g.Observer}
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.Type != client.PacketType_DIAL_REQ {
		g.Log.Warn("frontend stream did not start with DIAL_REQ", "frontend", "grpc", "type", first.Type.String())
		return errors.New("expected DIAL_REQ as the first packet")
	}
	req := first.GetDialRequest()
	random, address := req.GetRandom(), req.GetAddress()
	who := clientOfStream(stream.Context())
	release, refusal := g.admit(req, who)
	if release == nil {
		return stream.Send(anp.DialRsp(random, 0, refusal))
	}
	log := g.Log.With("frontend", "grpc", "dial", random, "address", limits.Clip(address), "client", who)
	return g.dial(stream, random, address, release, log)
}

// admit checks a DIAL_REQ and takes one of its client's pending-dial
// places; release gives it back. A refused request gets release nil and
// the refusal (which never echoes the request whole).
func (g *GRPC) admit(req *client.DialRequest, who string) (release func(), refusal string) {
	address := req.GetAddress()
	if req.GetProtocol() != "tcp" {
		return nil, "protocol " + limits.Clip(req.GetProtocol()) + " not supported"
	}
	if err := checkAddress(address); err != nil {
		g.Limits.Log().Log(slog.LevelInfo, "grpc_bad_target", "DIAL_REQ refused: bad target", "frontend", "grpc", "client", who, "err", limits.Clip(err.Error()))
		return nil, limits.Clip(err.Error())
	}
	release, pending, ok := g.clients.acquire(who, g.MaxPendingPerClient)
	if !ok {
		g.Limits.Hit(limits.PendingDialsClient, "dial refused: this frontend client has too many dials waiting for an agent's answer; raise --max-pending-dials-per-client if that is its normal load, else look at why agents answer slowly (dial_duration_seconds)",
			"frontend", "grpc", "client", who, "address", limits.Clip(address), "pending", pending)
		g.observe(link.ReasonBusy, time.Now())
		return nil, fmt.Sprintf("too many pending dials: this client has %d dials waiting for an agent's answer (proxy-server --max-pending-dials-per-client)", pending)
	}
	return release, ""
}

// dial dials address for the stream, answers DIAL_RSP and, connected,
// pumps the data. release is called when the dial has ended.
func (g *GRPC) dial(stream client.ProxyService_ProxyServer, random int64, address string, release func(), log *slog.Logger) error {
	// The client may send DIAL_CLS or vanish while we dial: one Recv runs
	// beside the dial, and its result is handed on to the data phase.
	recvd := make(chan recvResult, 1)
	go func() {
		p, err := stream.Recv()
		recvd <- recvResult{p, err}
	}()
	timeout := g.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	dctx, dcancel := context.WithTimeout(stream.Context(), timeout)
	defer dcancel()
	dres := make(chan dialResult, 1)
	start := time.Now()
	go func() {
		c, err := g.Dialer.Dial(dctx, address)
		release() // the dial no longer waits, even if the client gave up on it before
		dres <- dialResult{c, err}
	}()
	var d dialResult
	select {
	case d = <-dres:
	case r := <-recvd:
		// Before DIAL_RSP a client can only cancel: DIAL_CLS, or it is gone.
		dcancel()
		if d = <-dres; d.c != nil {
			_ = d.c.Close()
		}
		log.Info("dial cancelled by the client", "packet", packetType(r), "err", r.err)
		g.observe(link.ReasonCancelled, start)
		return nil
	}
	dcancel() // dctx bounds the dial only: its timer goes now, not with the connection
	if d.err != nil {
		reason := link.ReasonOf(d.err)
		g.observe(reason, start)
		log.Info("dial failed", "reason", reason, "err", d.err, "took", time.Since(start))
		return stream.Send(anp.DialRsp(random, 0, d.err.Error()))
	}
	g.observe("", start)
	id := g.nextID.Add(1)
	if err := stream.Send(anp.DialRsp(random, id, "")); err != nil {
		_ = d.c.Close()
		return err
	}
	log.Debug("connected", "conn", id, "took", time.Since(start))
	return g.pump(stream, d.c, id, recvd, log)
}

func (g *GRPC) observe(r link.Reason, start time.Time) {
	if g.OnDial != nil {
		g.OnDial("grpc", r, time.Since(start))
	}
}

// firstDataGrace: see waitFirstData.
const firstDataGrace = 100 * time.Millisecond

// waitFirstData holds a backend's first bytes until the client has spoken or
// firstDataGrace has passed. konnectivity-client registers a new connection
// only after its reader has handed DIAL_RSP on, so DATA right behind
// DIAL_RSP can find no connection and be answered with CLOSE_REQ: a backend
// that speaks first (kube-apiserver's HTTP and TLS never do) would lose its
// connection at random.
func waitFirstData(spoke <-chan struct{}) {
	t := time.NewTimer(firstDataGrace)
	defer t.Stop()
	select {
	case <-spoke:
	case <-t.C:
	}
}

func packetType(r recvResult) string {
	if r.p == nil {
		return ""
	}
	return r.p.Type.String()
}

// pump moves DATA between the stream and c until either side ends.
func (g *GRPC) pump(stream client.ProxyService_ProxyServer, c net.Conn, id int64, recvd <-chan recvResult, log *slog.Logger) error {
	inDone := make(chan bool, 1) // true: the client sent CLOSE_REQ
	spoke := make(chan struct{}) // closed at the client's first packet
	go func() {
		r := <-recvd
		close(spoke)
		for {
			if r.err != nil {
				inDone <- false
				return
			}
			switch r.p.Type {
			case client.PacketType_DATA:
				if b := r.p.GetData().GetData(); len(b) > 0 {
					// Blocking here is the flow control: gRPC stops
					// reading this stream until the backend takes the data.
					if _, err := c.Write(b); err != nil {
						inDone <- false
						return
					}
				}
			case client.PacketType_CLOSE_REQ:
				inDone <- true
				return
			case client.PacketType_DIAL_CLS:
				inDone <- false
				return
			}
			p, err := stream.Recv()
			r = recvResult{p, err}
		}
	}()
	outDone := make(chan error, 1)
	go func() {
		buf := dataBufs.Get().(*[]byte)
		defer dataBufs.Put(buf)
		first := true
		for {
			n, err := c.Read(*buf)
			if n > 0 && first {
				first = false
				waitFirstData(spoke)
			}
			if n > 0 {
				if serr := stream.Send(anp.Data(id, (*buf)[:n])); serr != nil {
					outDone <- serr
					return
				}
			}
			if err != nil {
				outDone <- err
				return
			}
		}
	}()
	select {
	case err := <-outDone:
		// The backend side ended (or the client stopped taking data).
		_ = c.Close()
		if errors.Is(err, io.EOF) {
			log.Debug("backend closed the connection", "conn", id)
			return stream.Send(anp.CloseRsp(id, ""))
		}
		// Cut, not closed: say so, so the client can tell a truncated
		// stream from a whole one (konnectivity-client returns it from Close).
		log.Info("connection cut", "conn", id, "err", err)
		return stream.Send(anp.CloseRsp(id, err.Error()))
	case closeReq := <-inDone:
		_ = c.Close()
		<-outDone
		log.Debug("client closed the connection", "conn", id, "closeReq", closeReq)
		if closeReq {
			return stream.Send(anp.CloseRsp(id, ""))
		}
		return nil
	}
}

// observed reports a client stream's packets and errors to an Observer.
type observed struct {
	client.ProxyService_ProxyServer
	obs anp.Observer
}

func (o observed) Send(p *client.Packet) error {
	err := o.ProxyService_ProxyServer.Send(p)
	if err != nil {
		o.obs.StreamError(true, p.Type, err)
		return err
	}
	o.obs.Packet(true, p.Type)
	return nil
}

func (o observed) Recv() (*client.Packet, error) {
	p, err := o.ProxyService_ProxyServer.Recv()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			o.obs.StreamError(false, client.PacketType(-1), err)
		}
		return nil, err
	}
	o.obs.Packet(false, p.Type)
	return p, nil
}
