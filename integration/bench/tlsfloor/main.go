// Command tlsfloor is the bench's reference for what any TLS tunnel costs
// on this machine: two relays that do nothing but copy. "near" accepts on a
// Unix socket and, for each connection, dials "far" over TLS; "far"
// accepts TLS and dials the one backend. io.Copy with 256 KiB buffers, one
// TLS connection per tunneled connection: no multiplexing, no framing, no
// flow control, no dial protocol. It is not a product: it only gives the
// bench a floor to read the tunnels' figures against.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
)

func main() {
	role := flag.String("role", "", "near (Unix socket -> TLS) or far (TLS -> backend)")
	listen := flag.String("listen", "", "near: the Unix socket path; far: host:port")
	to := flag.String("to", "", "near: far's host:port; far: the backend's host:port")
	cert := flag.String("cert", "", "far: its certificate")
	key := flag.String("key", "", "far: its key")
	ca := flag.String("ca", "", "near: the CA that signed far's certificate")
	flag.Parse()
	if err := run(*role, *listen, *to, *cert, *key, *ca); err != nil {
		slog.Error("tlsfloor", "err", err)
		os.Exit(1)
	}
}

func run(role, listen, to, certFile, keyFile, caFile string) error {
	switch role {
	case "near":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca %s: no certificate", caFile)
		}
		host, _, err := net.SplitHostPort(to)
		if err != nil {
			return fmt.Errorf("--to: %w", err)
		}
		cfg := &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS13}
		ln, err := net.Listen("unix", listen)
		if err != nil {
			return err
		}
		return serve(ln, func() (net.Conn, error) { return tls.Dial("tcp", to, cfg) })
	case "far":
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("--cert/--key: %w", err)
		}
		ln, err := tls.Listen("tcp", listen, &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS13})
		if err != nil {
			return err
		}
		return serve(ln, func() (net.Conn, error) { return net.Dial("tcp", to) })
	}
	return fmt.Errorf("--role %q: want near or far", role)
}

// serve relays every accepted connection to a new one from dial until the
// listener fails (the process is killed when the bench ends).
func serve(ln net.Listener, dial func() (net.Conn, error)) error {
	for {
		a, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer a.Close()
			b, err := dial()
			if err != nil {
				slog.Warn("tlsfloor: dial", "err", err)
				return
			}
			defer b.Close()
			done := make(chan struct{})
			go func() { copyHalf(b, a); close(done) }()
			copyHalf(a, b)
			<-done
		}()
	}
}

// copyHalf copies src to dst, then passes the EOF on as a half-close.
func copyHalf(dst, src net.Conn) {
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 256<<10))
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && (err == nil || errors.Is(err, io.EOF)) {
		_ = cw.CloseWrite()
		return
	}
	_ = dst.Close()
}
