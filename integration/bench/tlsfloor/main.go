// Command tlsfloor is the bench's reference for what any TLS tunnel costs
// on this machine: two relays that do nothing but copy. "near" accepts on a
// Unix socket and, for each connection, dials "far" over TLS; "far"
// accepts TLS and dials the one backend. io.Copy with 256 KiB buffers, one
// TLS connection per tunneled connection: no multiplexing, no framing, no
// flow control, no dial protocol. It is not a product: it only gives the
// bench a floor to read the tunnels' figures against.
//
// Dials have a floor of their own (--connect-listen, --dial-to): the least
// any reverse tunnel does per dial. near reads an HTTP CONNECT, takes a TLS
// connection to far that it set up beforehand (as a tunnel's link is up
// before its dials; a CONNECT to fillAddress fills that pool, and the
// bench asks for it before the dials it measures), and sends the address; far dials it and answers one
// byte; near answers the client "200" and both copy. The same process hops
// as a tunnel's dial, with no multiplexing, no authorization and no
// bookkeeping.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
)

func main() {
	var o options
	flag.StringVar(&o.role, "role", "", "near (Unix socket -> TLS) or far (TLS -> backend)")
	flag.StringVar(&o.listen, "listen", "", "near: the Unix socket path; far: host:port")
	flag.StringVar(&o.to, "to", "", "near: far's host:port; far: the backend's host:port")
	flag.StringVar(&o.connectListen, "connect-listen", "", "near: a Unix socket path for the dial floor (HTTP CONNECT); far: host:port where it takes dials")
	flag.StringVar(&o.dialTo, "dial-to", "", "near: far's host:port for dials (far's --connect-listen)")
	flag.IntVar(&o.pool, "pool", 512, "near: how many TLS connections to far a CONNECT to '"+fillAddress+"' sets up, for the dials that follow")
	flag.StringVar(&o.cert, "cert", "", "far: its certificate")
	flag.StringVar(&o.key, "key", "", "far: its key")
	flag.StringVar(&o.ca, "ca", "", "near: the CA that signed far's certificate")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		slog.Error("tlsfloor", "err", err)
		os.Exit(1)
	}
}

type options struct {
	role, listen, to, connectListen, dialTo, cert, key, ca string
	pool                                                   int
}

// run serves until a listener fails or ctx ends (then it closes them and
// the pool, and returns nil).
func run(ctx context.Context, o options) error {
	errs := make(chan error, 2)
	var lns []net.Listener
	var links *linkPool
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
		if links != nil {
			links.close()
		}
	}()
	switch o.role {
	case "near":
		pem, err := os.ReadFile(o.ca)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca %s: no certificate", o.ca)
		}
		host, _, err := net.SplitHostPort(o.to)
		if err != nil {
			return fmt.Errorf("--to: %w", err)
		}
		cfg := &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS13}
		ln, err := net.Listen("unix", o.listen)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		go func() { errs <- serve(ln, func() (net.Conn, error) { return tls.Dial("tcp", o.to, cfg) }) }()
		if o.connectListen != "" {
			cl, err := net.Listen("unix", o.connectListen)
			if err != nil {
				return err
			}
			lns = append(lns, cl)
			links = newLinkPool(o.pool, func() (*tls.Conn, error) { return tls.Dial("tcp", o.dialTo, cfg) })
			go func() { errs <- serveConnect(cl, links) }()
		}
	case "far":
		c, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return fmt.Errorf("--cert/--key: %w", err)
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS13}
		ln, err := tls.Listen("tcp", o.listen, cfg)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		go func() { errs <- serve(ln, func() (net.Conn, error) { return net.Dial("tcp", o.to) }) }()
		if o.connectListen != "" {
			dl, err := tls.Listen("tcp", o.connectListen, cfg)
			if err != nil {
				return err
			}
			lns = append(lns, dl)
			go func() { errs <- serveDials(dl) }()
		}
	default:
		return fmt.Errorf("--role %q: want near or far", o.role)
	}
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
		return nil
	}
}

// linkPool holds TLS connections to far, handshaken before a dial takes
// one. It fills up when asked (see serveConnect), never beside a dial
// being measured; a dial that finds it empty sets up its own connection.
type linkPool struct {
	conns chan *tls.Conn
	dial  func() (*tls.Conn, error)
}

func newLinkPool(n int, dial func() (*tls.Conn, error)) *linkPool {
	return &linkPool{conns: make(chan *tls.Conn, n), dial: dial}
}

// fill sets up connections until the pool is full.
func (p *linkPool) fill() error {
	for len(p.conns) < cap(p.conns) {
		c, err := p.dial()
		if err == nil {
			err = c.HandshakeContext(context.Background())
		}
		if err != nil {
			return fmt.Errorf("set up a connection to far: %w", err)
		}
		p.conns <- c
	}
	return nil
}

// close closes the connections the pool holds.
func (p *linkPool) close() {
	for {
		select {
		case c := <-p.conns:
			_ = c.Close()
		default:
			return
		}
	}
}

func (p *linkPool) take() (*tls.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	default:
		return p.dial()
	}
}

// fillAddress, as a CONNECT's address, asks near to fill its pool of
// connections to far; the answer comes once it is full.
const fillAddress = "fill.pool.tlsfloor:0"

// serveConnect answers HTTP CONNECT requests over connections of the pool.
func serveConnect(ln net.Listener, links *linkPool) error {
	return each(ln, func(a net.Conn) {
		br := bufio.NewReader(a)
		addr, err := readConnect(br)
		if err != nil {
			slog.Warn("tlsfloor: CONNECT", "err", err)
			return
		}
		if addr == fillAddress { // the bench, before the dials it measures
			if err := links.fill(); err != nil {
				slog.Warn("tlsfloor: fill the pool", "err", err)
				_, _ = io.WriteString(a, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
				return
			}
			_, _ = io.WriteString(a, "HTTP/1.1 204 No Content\r\n\r\n")
			return
		}
		b, err := links.take()
		if err != nil {
			slog.Warn("tlsfloor: connection to far", "err", err)
			return
		}
		defer b.Close()
		var answer [1]byte
		if _, err := io.WriteString(b, addr+"\n"); err != nil {
			slog.Warn("tlsfloor: dial request", "err", err)
			return
		}
		if _, err := io.ReadFull(b, answer[:]); err != nil || answer[0] != '0' {
			_, _ = io.WriteString(a, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
			return
		}
		if _, err := io.WriteString(a, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			return
		}
		relay(bufConn{a, br}, b)
	})
}

// readConnect reads a CONNECT request's head and returns its address.
func readConnect(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "CONNECT" {
		return "", fmt.Errorf("not a CONNECT request: %q", line)
	}
	for range 64 { // headers, up to the empty line
		h, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.TrimSpace(h) == "" {
			return f[1], nil
		}
	}
	return "", errors.New("CONNECT request: too many header lines")
}

// serveDials takes one dial per connection: an address line, answered
// with '0' once the backend is dialed ('1' if the dial failed).
func serveDials(ln net.Listener) error {
	return each(ln, func(a net.Conn) {
		br := bufio.NewReader(a)
		addr, err := br.ReadString('\n')
		if err != nil {
			return // a pooled connection near closed unused
		}
		b, err := net.Dial("tcp", strings.TrimSpace(addr))
		if err != nil {
			_, _ = a.Write([]byte{'1'})
			return
		}
		defer b.Close()
		if _, err := a.Write([]byte{'0'}); err != nil {
			return
		}
		relay(bufConn{a, br}, b)
	})
}

// serve relays every accepted connection to a new one from dial until the
// listener fails (the process is killed when the bench ends).
func serve(ln net.Listener, dial func() (net.Conn, error)) error {
	return each(ln, func(a net.Conn) {
		b, err := dial()
		if err != nil {
			slog.Warn("tlsfloor: dial", "err", err)
			return
		}
		defer b.Close()
		relay(a, b)
	})
}

// bufConn is a connection whose first bytes a bufio.Reader took.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c bufConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// each runs handle on a goroutine for every connection ln accepts, and
// closes the connection after it, until the listener fails.
func each(ln net.Listener, handle func(net.Conn)) error {
	for {
		a, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer a.Close()
			handle(a)
		}()
	}
}

// relay copies both ways until both directions ended.
func relay(a, b net.Conn) {
	done := make(chan struct{})
	go func() { copyHalf(b, a); close(done) }()
	copyHalf(a, b)
	<-done
}

// bufs holds the copy buffers, so that a dial does not allocate (and
// clear) half a megabyte, nor make the garbage collector run beside the
// dials being measured.
var bufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// copyHalf copies src to dst, then passes the EOF on as a half-close.
func copyHalf(dst, src net.Conn) {
	buf := bufs.Get().(*[]byte)
	defer bufs.Put(buf)
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *buf)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && (err == nil || errors.Is(err, io.EOF)) {
		_ = cw.CloseWrite()
		return
	}
	_ = dst.Close()
}
