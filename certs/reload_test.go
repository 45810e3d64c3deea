package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// pkiDir is a CA and the files of one server and one client, rewritable
// by the test.
type pkiDir struct {
	t               *testing.T
	dir             string
	ca              *CA
	caFile          string
	srvCert, srvKey string
	cliCert, cliKey string
}

func newPKIDir(t *testing.T) *pkiDir {
	d := &pkiDir{t: t, dir: t.TempDir(), ca: newTestCA(t, KeySpec{})}
	d.caFile = filepath.Join(d.dir, "ca.crt")
	d.srvCert, d.srvKey = filepath.Join(d.dir, "server.crt"), filepath.Join(d.dir, "server.key")
	d.cliCert, d.cliKey = filepath.Join(d.dir, "client.crt"), filepath.Join(d.dir, "client.key")
	d.writeCA(d.ca)
	d.issueServer(d.ca)
	d.issueClient(d.ca)
	return d
}

func (d *pkiDir) write(files []File) {
	d.t.Helper()
	if err := WriteFiles(files, true); err != nil {
		d.t.Fatal(err)
	}
}

func (d *pkiDir) writeCA(cas ...*CA) {
	var b []byte
	for _, ca := range cas {
		b = append(b, ca.CertPEM...)
	}
	d.write([]File{{d.caFile, b, 0o644}})
}

func (d *pkiDir) issueServer(ca *CA) *Pair {
	d.t.Helper()
	p, err := ca.Issue(Request{CommonName: "srv", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		d.t.Fatal(err)
	}
	d.write(p.Files(d.srvCert, d.srvKey))
	return p
}

func (d *pkiDir) issueClient(ca *CA) *Pair {
	d.t.Helper()
	p, err := ca.Issue(ClientRequest("cli"))
	if err != nil {
		d.t.Fatal(err)
	}
	d.write(p.Files(d.cliCert, d.cliKey))
	return p
}

// tlsServer accepts TLS on loopback with cfg, completes each handshake and
// writes the peer's certificate CN, until cleanup.
func tlsServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				cn := "-"
				if p := tc.ConnectionState().PeerCertificates; len(p) > 0 {
					cn = p[0].Subject.CommonName
				}
				_, _ = io.WriteString(c, cn+"\n")
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// handshake dials addr with cfg and returns the server's leaf and what the
// server saw of us.
func handshake(addr string, cfg *tls.Config) (*x509.Certificate, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, "", err
	}
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], strings.TrimSpace(string(b)), nil
}

func mustReloader(t *testing.T, cfg ReloaderConfig) *Reloader {
	t.Helper()
	r, err := NewReloader(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestReloaderRotation runs real TLS handshakes over loopback between a
// server and a client whose certificates and CA come from Reloaders, and
// rotates each file under them.
func TestReloaderRotation(t *testing.T) {
	d := newPKIDir(t)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	srv := mustReloader(t, ReloaderConfig{CertFile: d.srvCert, KeyFile: d.srvKey, CAFile: d.caFile, CheckInterval: -1, Log: log})
	cli := mustReloader(t, ReloaderConfig{CertFile: d.cliCert, KeyFile: d.cliKey, CAFile: d.caFile, CheckInterval: -1, Log: log})
	addr := tlsServer(t, srv.ServerConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	dial := func() (*x509.Certificate, string, error) {
		cfg := cli.ClientConfig(nil)
		cfg.ServerName = "127.0.0.1"
		return handshake(addr, cfg)
	}
	leaf, peer, err := dial()
	if err != nil {
		t.Fatalf("first handshake: %v", err)
	}
	if peer != "cli" {
		t.Fatalf("server saw client %q", peer)
	}

	// New server certificate: the next handshake serves it.
	next := d.issueServer(d.ca)
	if leaf, _, err = dial(); err != nil || leaf.SerialNumber.Cmp(next.Cert.SerialNumber) != 0 {
		t.Fatalf("after rotating the server certificate: serial %v, %v; want %v", leaf.SerialNumber, err, next.Cert.SerialNumber)
	}

	// A new CA: the client's certificate from it is refused until the
	// server's CA file holds it, then accepted; the client trusts the new
	// server certificate only once its CA file holds the new CA.
	ca2 := newTestCA(t, KeySpec{})
	d.issueClient(ca2)
	if _, _, err := dial(); err == nil {
		t.Fatal("a client certificate from an unknown CA was accepted")
	}
	d.writeCA(d.ca, ca2)
	if _, peer, err := dial(); err != nil || peer != "cli" {
		t.Fatalf("after adding the new CA: %q, %v", peer, err)
	}
	d.issueServer(ca2)
	d.writeCA(ca2)
	if _, _, err := dial(); err != nil {
		t.Fatalf("after moving everything to the new CA: %v", err)
	}
	if !strings.Contains(logs.String(), "certificates reloaded") {
		t.Errorf("no reload logged:\n%s", logs.String())
	}
}

// TestReloaderKeepsOldOnBadFiles: a half-done rotation (certificate
// replaced, key not yet) keeps serving the old pair, is logged once, and
// the completed rotation is picked up.
func TestReloaderKeepsOldOnBadFiles(t *testing.T) {
	d := newPKIDir(t)
	var logs syncBuffer
	r := mustReloader(t, ReloaderConfig{CertFile: d.srvCert, KeyFile: d.srvKey, CheckInterval: -1, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	old, _ := r.GetCertificate(nil)
	p, err := d.ca.Issue(Request{CommonName: "srv2", DNSNames: []string{"x"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	d.write([]File{{d.srvCert, p.CertPEM, 0o644}})
	for range 3 {
		got, err := r.GetCertificate(nil)
		if err != nil || got != old {
			t.Fatalf("half-rotated files: got a different certificate (%v)", err)
		}
	}
	if n := strings.Count(logs.String(), "reload failed"); n != 1 {
		t.Errorf("failure logged %d times, want once:\n%s", n, logs.String())
	}
	d.write([]File{{d.srvKey, p.KeyPEM, 0o600}})
	got, err := r.GetCertificate(nil)
	if err != nil || got.Leaf.Subject.CommonName != "srv2" {
		t.Fatalf("after the key arrived: %v, %v", got.Leaf.Subject, err)
	}
}

// TestReloaderInterval: files are looked at no more than once per
// interval, and a change shows after it.
func TestReloaderInterval(t *testing.T) {
	d := newPKIDir(t)
	const interval = 200 * time.Millisecond
	r := mustReloader(t, ReloaderConfig{CertFile: d.srvCert, KeyFile: d.srvKey, CheckInterval: interval})
	old, _ := r.GetCertificate(nil)
	written := time.Now()
	next := d.issueServer(d.ca)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := r.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		if got.Leaf.SerialNumber.Cmp(next.Cert.SerialNumber) == 0 {
			break
		}
		if got != old {
			t.Fatal("an unknown certificate")
		}
		if time.Now().After(deadline) {
			t.Fatal("the new certificate was never loaded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if took := time.Since(written); took > interval+2*time.Second {
		t.Errorf("reload took %v with a %v interval", took, interval)
	}
}

// TestReloaderVerifyCallbacks: the verify callbacks for configs that turn
// standard verification off, over real handshakes.
func TestReloaderVerifyCallbacks(t *testing.T) {
	d := newPKIDir(t)
	srv := mustReloader(t, ReloaderConfig{CertFile: d.srvCert, KeyFile: d.srvKey, CAFile: d.caFile, CheckInterval: -1})
	cli := mustReloader(t, ReloaderConfig{CertFile: d.cliCert, KeyFile: d.cliKey, CAFile: d.caFile, CheckInterval: -1})
	addr := tlsServer(t, &tls.Config{
		MinVersion: tls.VersionTLS12, GetCertificate: srv.GetCertificate,
		ClientAuth: tls.RequireAnyClientCert, VerifyConnection: srv.VerifyClientConnection,
	})
	cfg := func(name string) *tls.Config {
		return &tls.Config{
			MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, ServerName: name,
			GetClientCertificate: cli.GetClientCertificate, VerifyConnection: cli.VerifyServerConnection(name),
		}
	}
	if _, peer, err := handshake(addr, cfg("127.0.0.1")); err != nil || peer != "cli" {
		t.Fatalf("handshake: %q, %v", peer, err)
	}
	if _, _, err := handshake(addr, cfg("10.9.9.9")); err == nil {
		t.Fatal("server certificate accepted for a name it does not have")
	}
	// A server-auth-only certificate is no client certificate.
	bad := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, GetClientCertificate: srv.GetClientCertificate}
	if _, _, err := handshake(addr, bad); err == nil {
		t.Fatal("a server certificate was accepted as a client certificate")
	}
}

func TestNewReloaderRefuses(t *testing.T) {
	d := newPKIDir(t)
	for _, cfg := range []ReloaderConfig{
		{},
		{CertFile: d.srvCert},
		{CertFile: d.srvCert, KeyFile: d.cliKey},
		{CAFile: filepath.Join(d.dir, "missing.crt")},
		{CAFile: d.srvKey},
	} {
		if _, err := NewReloader(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServerConfigClonedAndResumed: the config survives the server's own
// clone-and-set of NextProtos (as proxy-server's agent port does), and a
// client whose CA was taken out of the server's bundle cannot resume its
// session.
func TestServerConfigClonedAndResumed(t *testing.T) {
	d := newPKIDir(t)
	cliCA := filepath.Join(d.dir, "client-trusts.crt")
	d.write([]File{{cliCA, d.ca.CertPEM, 0o644}})
	srv := mustReloader(t, ReloaderConfig{CertFile: d.srvCert, KeyFile: d.srvKey, CAFile: d.caFile, CheckInterval: -1})
	cli := mustReloader(t, ReloaderConfig{CertFile: d.cliCert, KeyFile: d.cliKey, CAFile: cliCA, CheckInterval: -1})
	scfg := srv.ServerConfig(nil).Clone()
	scfg.NextProtos = []string{"isthmus/1", "h2"}
	addr := tlsServer(t, scfg)
	cache := tls.NewLRUClientSessionCache(4)
	dial := func() (tls.ConnectionState, error) {
		cfg := cli.ClientConfig(nil)
		cfg.ServerName, cfg.NextProtos, cfg.ClientSessionCache = "127.0.0.1", []string{"isthmus/1"}, cache
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil { // also takes in the session ticket
			return tls.ConnectionState{}, err
		}
		return c.ConnectionState(), nil
	}
	cs, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	if cs.NegotiatedProtocol != "isthmus/1" {
		t.Fatalf("ALPN: %q", cs.NegotiatedProtocol)
	}
	if cs, err = dial(); err != nil || !cs.DidResume {
		t.Fatalf("second handshake: resumed %v, %v", cs.DidResume, err)
	}
	d.writeCA(newTestCA(t, KeySpec{})) // the server trusts another CA only
	if _, err := dial(); err == nil {
		t.Fatal("a client whose CA is gone resumed its session")
	}
}
