package linktest

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"isthmus.dev/tunnel/link"
)

// testNetConn runs golang.org/x/net/nettest's net.Conn contract (I/O,
// deadlines past, present and future, Close waking blocked calls,
// concurrent methods) over the two ends of one tunneled connection, with
// nothing spliced between them. agentEnd picks which end is tested: the
// one the server dialed, or the one the agent accepted.
func testNetConn(t *testing.T, l Link, agentEnd bool) {
	p := l.New(t, Options{})
	type accepted struct {
		c    net.Conn
		pipe [2]net.Conn
		err  error
	}
	ends := make(chan accepted, 1)
	serveWith(t, p, func(r link.Request) {
		// No backend: the test holds the agent's end itself. Accept's
		// argument bounds writes to a backend after the server's close
		// (ANP); here it is one end of a pipe nothing else uses.
		a, b := net.Pipe()
		c, err := r.Accept(a)
		ends <- accepted{c, [2]net.Conn{a, b}, err}
	})
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		sc, err := p.Server.Dial(ctx(t, 20*time.Second), "127.0.0.1:1")
		if err != nil {
			return nil, nil, nil, err
		}
		var a accepted
		select {
		case a = <-ends:
		case <-time.After(20 * time.Second):
			a.err = errors.New("the agent never accepted the connection")
		}
		stop = func() {
			_ = sc.Close()
			if a.c != nil {
				_ = a.c.Close()
			}
			_ = a.pipe[0].Close()
			_ = a.pipe[1].Close()
		}
		if a.err != nil {
			stop()
			return nil, nil, nil, a.err
		}
		if agentEnd {
			return a.c, sc, stop, nil
		}
		return sc, a.c, stop, nil
	})
	noLeftovers(t, p)
}
