package native

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"

	"isthmus.dev/tunnel/link"
	"isthmus.dev/tunnel/link/linktest"
)

// The link conformance suite over the native link: TLS on loopback, with
// records batched as the agent does; with yamux at both ends (the
// default), package mux at both ends, and one of each either way round
// (the wire is the same). The server link runs by Start, as the agent port
// runs it.
func TestConformance(t *testing.T) {
	for _, v := range []struct{ name, server, agent string }{
		{"native", MuxYamux, MuxYamux},
		{"native-mux", MuxIsthmus, MuxIsthmus},
		{"native-mux-server-yamux-agent", MuxIsthmus, MuxYamux},
		{"native-yamux-server-mux-agent", MuxYamux, MuxIsthmus},
	} {
		so := opts
		so.Config.Mux = v.server
		ao := AgentOptions{Config: Config{Mux: v.agent}}
		t.Run(v.name, func(t *testing.T) {
			linktest.Run(t, linktest.Link{
				Name: v.name,
				Caps: linktest.Caps{HalfClose: true, FlowControl: true, CutToAgent: true},
				New: func(t testing.TB, _ linktest.Options) *linktest.Pair {
					e := connectLinks(t, so, ao, nil, make(chan error, 1))
					return &linktest.Pair{
						Server: e.server, Agent: e.agent,
						ServerActive: e.server.Active, AgentActive: e.agent.Active,
						ServerDone: e.server.Done(),
						Cut:        e.cut, Close: e.close,
					}
				},
			})
		})
	}
}

// ends are a connected server link and agent link, both running.
type ends struct {
	server *ServerLink
	agent  *AgentLink
	raw    *net.TCPConn // the agent's TCP connection, under its TLS
	close  func()       // ends both links and waits for them; idempotent
}

// cut resets the agent's TCP connection: the link is lost with no goodbye.
func (e *ends) cut() {
	_ = e.raw.SetLinger(0)
	_ = e.raw.Close()
}

// connect connects an agent link to a server link over TLS on loopback and
// runs both (and, if dial is set, the plain agent serve loop) until close
// or the test's cleanup.
func connect(t testing.TB, so ServerOptions, ao AgentOptions, dial link.DialFunc) *ends {
	t.Helper()
	return connectLinks(t, so, ao, dial, nil)
}

// connectLinks is connect; with started set, the server link runs by
// Start rather than Run, and started receives Start's result when it ends.
func connectLinks(t testing.TB, so ServerOptions, ao AgentOptions, dial link.DialFunc, started chan<- error) *ends {
	t.Helper()
	st, ct := linktest.TLS(t, ALPN)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	type res struct {
		l   *ServerLink
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- res{nil, err}
			return
		}
		// As the agent port does: TLS over a RawConn.
		l, err := Accept(ctx, tls.Server(WrapRaw(c), st), so)
		accepted <- res{l, err}
	}()
	raw, conn := dialTLS(t, ln.Addr().String(), ct)
	al, w, err := Connect(ctx, conn, Hello{AgentID: "agent-1", Identifiers: "host=n1"}, ao)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if w.ServerID != so.ServerID || w.ServerCount != so.ServerCount {
		t.Fatalf("welcome %+v", w)
	}
	r := <-accepted
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	if started != nil {
		r.l.Start(ctx, func(err error) { started <- err; wg.Done() })
	} else {
		go func() { defer wg.Done(); _ = r.l.Run(ctx) }()
	}
	go func() { defer wg.Done(); _ = al.Run(ctx) }()
	if dial != nil {
		wg.Add(1)
		go func() { defer wg.Done(); linktest.Serve(ctx, al, dial) }()
	}
	e := &ends{server: r.l, agent: al, raw: raw, close: sync.OnceFunc(func() { cancel(); wg.Wait() })}
	t.Cleanup(e.close)
	return e
}

// dialTLS connects to addr as the agent does: TLS over a raw connection
// that batches records, offering ALPN.
func dialTLS(t testing.TB, addr string, ct *tls.Config) (*net.TCPConn, *tls.Conn) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(WrapRaw(raw), ct)
	if err := conn.Handshake(); err != nil {
		raw.Close()
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != ALPN {
		raw.Close()
		t.Fatalf("ALPN %q", p)
	}
	return raw.(*net.TCPConn), conn
}
