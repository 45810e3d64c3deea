package frontend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"isthmus.dev/tunnel/anp"
	"isthmus.dev/tunnel/limits"
	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/splice"
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
	// The client may send DIAL_CLS or vanish while we dial: the stream's
	// reader runs beside the dial, and goes on into the data phase.
	r := startReader(stream)
	defer close(r.conn) // no connection handed over: the reader ends
	timeout := g.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	dctx, dcancel := context.WithTimeout(stream.Context(), timeout)
	defer dcancel()
	dres := make(chan dialResult, 1)
	start := time.Now()
	// On a goroutine of its own: the dial's deep stack goes with it, not
	// with the handler that then serves the connection for its whole life.
	go func() {
		c, err := g.Dialer.Dial(dctx, address)
		release() // the dial no longer waits, even if the client gave up on it before
		dres <- dialResult{c, err}
	}()
	var d dialResult
	select {
	case d = <-dres:
	case <-r.spoke:
		// Before DIAL_RSP a client can only cancel: DIAL_CLS, or it is gone.
		dcancel()
		if d = <-dres; d.c != nil {
			_ = d.c.Close()
		}
		log.Info("dial cancelled by the client", "packet", packetType(r.first), "err", r.first.err)
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
	return g.pump(stream, d.c, id, r, log)
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

// pump moves DATA between the stream and c until either side ends: the
// reader writes the client's DATA to c, and the handler's goroutine (the
// stream's one sender) copies c to the client, with a buffer only while
// bytes move (splice.Copy). An idle connection costs these two goroutines
// and no buffer.
func (g *GRPC) pump(stream client.ProxyService_ProxyServer, c net.Conn, id int64, r *reader, log *slog.Logger) error {
	r.conn <- c
	_, _, err := splice.Copy(&dataWriter{stream: stream, id: id, spoke: r.spoke}, c)
	_ = c.Close()
	select {
	case closeReq := <-r.closed:
		// The client ended it; its reader closed c under the copy.
		log.Debug("client closed the connection", "conn", id, "closeReq", closeReq)
		if closeReq {
			return stream.Send(anp.CloseRsp(id, ""))
		}
		return nil
	default:
	}
	if err == nil {
		log.Debug("backend closed the connection", "conn", id)
		return stream.Send(anp.CloseRsp(id, ""))
	}
	// Cut, not closed (or the client stopped taking data): say so, so the
	// client can tell a truncated stream from a whole one
	// (konnectivity-client returns it from Close).
	log.Info("connection cut", "conn", id, "err", err)
	return stream.Send(anp.CloseRsp(id, err.Error()))
}

// reader is a stream's one reader (grpc-go allows one beside one sender),
// from the packet after DIAL_REQ to the stream's end. While the dial runs,
// the first thing it reads (DIAL_CLS, or the client gone) cancels the
// dial; once the connection is handed over, it writes the client's DATA to
// it.
type reader struct {
	stream client.ProxyService_ProxyServer
	spoke  chan struct{} // closed once first is set
	first  recvResult
	// conn hands the connection over once DIAL_RSP is out; closed without
	// one, it ends the reader.
	conn chan net.Conn
	// closed gets, once, how the client ended the connection (true:
	// CLOSE_REQ), before the reader closes the connection.
	closed chan bool
}

func startReader(stream client.ProxyService_ProxyServer) *reader {
	r := &reader{stream: stream, spoke: make(chan struct{}), conn: make(chan net.Conn, 1), closed: make(chan bool, 1)}
	go r.run()
	return r
}

func (r *reader) run() {
	p, err := r.stream.Recv()
	r.first = recvResult{p, err}
	close(r.spoke)
	c, ok := <-r.conn
	if !ok {
		return
	}
	r.closed <- r.copyIn(c)
	_ = c.Close() // ends the handler's copy from c
}

// copyIn writes the client's DATA to c, from the first packet on, until
// the client ends the connection (true: with CLOSE_REQ) or c fails.
func (r *reader) copyIn(c net.Conn) (closeReq bool) {
	in := r.first
	for ; in.err == nil; in.p, in.err = r.stream.Recv() {
		switch in.p.Type {
		case client.PacketType_DATA:
			if b := in.p.GetData().GetData(); len(b) > 0 {
				// Blocking here is the flow control: gRPC stops
				// reading this stream until the backend takes the data.
				if _, err := c.Write(b); err != nil {
					return false
				}
			}
		case client.PacketType_CLOSE_REQ:
			return true
		case client.PacketType_DIAL_CLS:
			return false
		}
	}
	return false
}

// dataWriter sends what is written to it as the connection's DATA packets.
type dataWriter struct {
	stream client.ProxyService_ProxyServer
	id     int64
	spoke  <-chan struct{} // see waitFirstData; nil once the first bytes went
}

func (w *dataWriter) Write(p []byte) (int, error) {
	if w.spoke != nil {
		waitFirstData(w.spoke)
		w.spoke = nil
	}
	// Fewer, larger packets cost konnectivity-client less (a channel send
	// each); MaxDataChunk stays far below gRPC's 4 MiB receive limit.
	for sent := 0; sent < len(p); {
		k := min(len(p)-sent, anp.MaxDataChunk)
		if err := w.stream.Send(anp.Data(w.id, p[sent:sent+k])); err != nil {
			return sent, err
		}
		sent += k
	}
	return len(p), nil
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
