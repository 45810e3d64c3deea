package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// TestRelays runs far and near in front of an echo backend and checks
// both floors: the plain relay (a TLS connection per connection) and the
// dial floor (HTTP CONNECT over a pooled TLS connection, after a fill),
// and that a refused dial answers 502.
func TestRelays(t *testing.T) {
	pki := harness.NewPKI(t)
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	port := func() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(t))) }
	farAddr, farDials := port(), port()
	dir := t.TempDir()
	sock, dialSock := filepath.Join(dir, "near.sock"), filepath.Join(dir, "dials.sock")
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan error, 2)
	go func() {
		ended <- run(ctx, options{role: "far", listen: farAddr, to: backend.Addr().String(), connectListen: farDials,
			cert: pki.AgentPortCert, key: pki.AgentPortKey})
	}()
	go func() {
		ended <- run(ctx, options{role: "near", listen: sock, to: farAddr, connectListen: dialSock, dialTo: farDials,
			pool: 4, ca: pki.CACert})
	}()
	defer func() {
		cancel()
		for range 2 {
			if err := <-ended; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}()
	dial := func(path string) net.Conn {
		for range 100 { // the relays start listening soon after run starts
			c, err := net.Dial("unix", path)
			if err == nil {
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				return c
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s: no relay listening", path)
		return nil
	}
	echo := func(c net.Conn, r io.Reader, msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(r, got); err != nil || string(got) != msg {
			t.Fatalf("echo: got %q, %v; want %q", got, err, msg)
		}
	}
	connect := func(addr string) (net.Conn, *bufio.Reader, string) {
		c := dial(dialSock)
		if _, err := io.WriteString(c, "CONNECT "+addr+" HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		status, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("CONNECT %s: %v", addr, err)
		}
		for { // the rest of the answer's head
			h, err := br.ReadString('\n')
			if err != nil || strings.TrimSpace(h) == "" {
				break
			}
		}
		return c, br, strings.TrimSpace(status)
	}

	c := dial(sock)
	echo(c, c, "through the plain relay")
	c.Close()

	c, _, status := connect(fillAddress)
	c.Close()
	if status != "HTTP/1.1 204 No Content" {
		t.Fatalf("fill: %q", status)
	}
	for i := range 6 { // more dials than the pool holds: the last ones dial afresh
		c, br, status := connect(backend.Addr().String())
		if status != "HTTP/1.1 200 Connection established" {
			t.Fatalf("dial %d: %q", i, status)
		}
		echo(c, br, "through the dial floor "+strconv.Itoa(i))
		c.Close()
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := closed.Addr().String()
	closed.Close()
	c, _, status = connect(refused)
	c.Close()
	if status != "HTTP/1.1 502 Bad Gateway" {
		t.Fatalf("dial to a closed port: %q", status)
	}
}
