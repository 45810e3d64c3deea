package splice_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/tunnel/link/linktest"
	"isthmus.dev/tunnel/splice"
)

// cutConn reads "partial", then fails the way a cut tunnel does.
type cutConn struct {
	net.Conn
	sent bool
}

var errCut = errors.New("tunnel cut")

func (c *cutConn) Read(p []byte) (int, error) {
	if !c.sent {
		c.sent = true
		return copy(p, "partial"), nil
	}
	return 0, errCut
}

// A cut source is passed on as a reset beneath TLS too, with no
// close_notify ahead of it: the client would read that alert as the clean
// end of a truncated stream (the CONNECT frontend's TCP clients speak TLS).
func TestCutSourceResetsBeneathTLS(t *testing.T) {
	st, ct := linktest.TLS(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", st)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.(*tls.Conn).Handshake()
		}
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	client, err := tls.Dial("tcp", ln.Addr().String(), ct)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	a := <-accepted
	if a == nil {
		t.Fatal("no TLS connection accepted")
	}
	b, backend := net.Pipe()
	defer backend.Close()
	res := make(chan splice.Result, 1)
	go func() { res <- splice.Splice(a, &cutConn{Conn: b}) }()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(client)
	if string(got) != "partial" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %q, %v; want the partial data, then a reset", got, err)
	}
	if r := <-res; !errors.Is(r.Err, errCut) {
		t.Fatalf("splice result %v, want the cut", r.Err)
	}
}
