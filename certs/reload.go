package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCheckInterval is how often at most a Reloader looks at its files.
const DefaultCheckInterval = time.Second

// ReloaderConfig names the files a Reloader serves and watches.
type ReloaderConfig struct {
	// CertFile and KeyFile are this side's certificate (with any
	// intermediates after it) and key; both or neither. Neither: the
	// Reloader only verifies peers.
	CertFile, KeyFile string
	// CAFile is the CA bundle peers are verified against; "" means no
	// peer verification by the Reloader.
	CAFile string
	// CheckInterval is how often at most the files are looked at (one
	// stat each, on use: during a handshake). 0 means
	// DefaultCheckInterval; negative means on every use.
	CheckInterval time.Duration
	// Log receives reloads and reload failures; nil discards.
	Log *slog.Logger
}

// Reloader holds a certificate, its key and a CA pool loaded from files,
// and loads them again when the files change: on use, at most once per
// CheckInterval, it compares each file's identity, size and modification
// time with what it loaded. A change that does not load (a key that does
// not match its certificate halfway through a rotation, a missing or empty
// file) keeps the previous material, is logged once, and is retried at the
// next check. Its methods are safe for concurrent use; it starts no
// goroutine and needs no Close.
//
// Wiring: a server takes ServerConfig(base) as its tls.Config; a client
// builds ClientConfig(base) for each connection it dials (or keeps one
// config with GetClientCertificate, InsecureSkipVerify and
// VerifyServerConnection(name) per server name).
type Reloader struct {
	cfg      ReloaderConfig
	log      *slog.Logger
	interval time.Duration
	next     atomic.Int64 // unix nanoseconds of the next check
	cur      atomic.Pointer[material]

	mu      sync.Mutex // serialises checks; guards stamps, lastErr
	stamps  []os.FileInfo
	lastErr string
}

// material is one consistent load of the files.
type material struct {
	cert *tls.Certificate // nil without CertFile
	pool *x509.CertPool   // nil without CAFile
}

// NewReloader loads the files once; they must load.
func NewReloader(cfg ReloaderConfig) (*Reloader, error) {
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("reloader: certificate and key files go together: give both or neither")
	}
	if cfg.CertFile == "" && cfg.CAFile == "" {
		return nil, errors.New("reloader: no files: give a certificate and key, a CA file, or both")
	}
	r := &Reloader{cfg: cfg, log: cfg.Log, interval: cfg.CheckInterval}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.interval == 0 {
		r.interval = DefaultCheckInterval
	}
	stamps, err := r.stat()
	if err != nil {
		return nil, err
	}
	m, err := r.load()
	if err != nil {
		return nil, err
	}
	r.stamps = stamps
	r.cur.Store(m)
	r.next.Store(time.Now().Add(r.interval).UnixNano())
	return r, nil
}

func (r *Reloader) files() []string {
	var f []string
	if r.cfg.CertFile != "" {
		f = append(f, r.cfg.CertFile, r.cfg.KeyFile)
	}
	if r.cfg.CAFile != "" {
		f = append(f, r.cfg.CAFile)
	}
	return f
}

func (r *Reloader) stat() ([]os.FileInfo, error) {
	files := r.files()
	st := make([]os.FileInfo, len(files))
	for i, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("reloader: %w", err)
		}
		st[i] = fi
	}
	return st, nil
}

func (r *Reloader) load() (*material, error) {
	m := &material{}
	if r.cfg.CertFile != "" {
		c, err := tls.LoadX509KeyPair(r.cfg.CertFile, r.cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("reloader: key pair %s, %s: %w", r.cfg.CertFile, r.cfg.KeyFile, err)
		}
		m.cert = &c
	}
	if r.cfg.CAFile != "" {
		b, err := os.ReadFile(r.cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reloader: %w", err)
		}
		cas, err := ParseCertificatesPEM(b)
		if err != nil {
			return nil, fmt.Errorf("reloader: CA file %s: %w", r.cfg.CAFile, err)
		}
		m.pool = x509.NewCertPool()
		for _, c := range cas {
			m.pool.AddCert(c)
		}
	}
	return m, nil
}

func unchanged(a, b []os.FileInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !os.SameFile(a[i], b[i]) || a[i].Size() != b[i].Size() || !a[i].ModTime().Equal(b[i].ModTime()) {
			return false
		}
	}
	return true
}

// material returns the current material, reloading first if a check is
// due and the files changed.
func (r *Reloader) material() *material {
	if r.interval < 0 || time.Now().UnixNano() >= r.next.Load() {
		r.check()
	}
	return r.cur.Load()
}

func (r *Reloader) check() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.interval >= 0 && now.UnixNano() < r.next.Load() {
		return // another caller just checked
	}
	r.next.Store(now.Add(r.interval).UnixNano())
	// Stamps are taken before reading: a change during the read shows at
	// the next check.
	stamps, err := r.stat()
	if err == nil && unchanged(stamps, r.stamps) {
		return
	}
	var m *material
	if err == nil {
		m, err = r.load()
	}
	if err != nil {
		if msg := err.Error(); msg != r.lastErr {
			r.lastErr = msg
			r.log.Error("certificate reload failed; keeping the loaded certificates", "err", err)
		}
		return
	}
	r.lastErr = ""
	r.stamps = stamps
	r.cur.Store(m)
	attrs := []any{"files", r.files()}
	if m.cert != nil && m.cert.Leaf != nil {
		attrs = append(attrs, "subject", m.cert.Leaf.Subject.CommonName, "not_after", m.cert.Leaf.NotAfter)
	}
	r.log.Info("certificates reloaded", attrs...)
}

// GetCertificate serves the current certificate, for tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	m := r.material()
	if m.cert == nil {
		return nil, errors.New("reloader: no certificate configured")
	}
	return m.cert, nil
}

// GetClientCertificate offers the current certificate, for
// tls.Config.GetClientCertificate; without one it offers none.
func (r *Reloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if m := r.material(); m.cert != nil {
		return m.cert, nil
	}
	return &tls.Certificate{}, nil
}

// CAPool is the current CA pool (nil without a CA file).
func (r *Reloader) CAPool() *x509.CertPool { return r.material().pool }

// VerifyClientConnection verifies a client's certificate chain against
// the current CA pool for client auth, for tls.Config.VerifyConnection on a
// server whose ClientAuth is tls.RequireAnyClientCert (so that the
// standard, fixed-pool verification is off). Unlike VerifyPeerCertificate,
// VerifyConnection also runs on resumed sessions, so a CA taken out of the
// bundle stops resumptions too.
func (r *Reloader) VerifyClientConnection(cs tls.ConnectionState) error {
	return r.verify(cs.PeerCertificates, "", x509.ExtKeyUsageClientAuth)
}

// VerifyServerConnection returns a tls.Config.VerifyConnection for a
// client whose config has InsecureSkipVerify set (so that the standard,
// fixed-pool verification is off): it verifies the server's chain against
// the current CA pool, for server auth and for serverName (a DNS name or
// an IP address, which must not be empty; the connection state does not
// carry IP addresses, hence the argument).
func (r *Reloader) VerifyServerConnection(serverName string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if serverName == "" {
			return errors.New("reloader: no server name to verify the server certificate against")
		}
		return r.verify(cs.PeerCertificates, serverName, x509.ExtKeyUsageServerAuth)
	}
}

func (r *Reloader) verify(certs []*x509.Certificate, name string, usage x509.ExtKeyUsage) error {
	pool := r.CAPool()
	if pool == nil {
		return errors.New("reloader: no CA file to verify the peer against")
	}
	if len(certs) == 0 {
		return errors.New("reloader: the peer sent no certificate")
	}
	opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool(), DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := certs[0].Verify(opts); err != nil {
		return fmt.Errorf("reloader: verify peer certificate %q: %w", certs[0].Subject.CommonName, err)
	}
	return nil
}

// ServerConfig is base (nil: an empty config with TLS 1.2 minimum) with
// the Reloader's certificate served on every handshake. With a CA file,
// clients are verified against the CA pool as it is at that handshake
// (resumptions included): base.ClientAuth tls.NoClientCert,
// RequireAnyClientCert and RequireAndVerifyClientCert require a verified
// client certificate; VerifyClientCertIfGiven and RequestClientCert verify
// one if given. The standard verification is turned off for this
// (ClientAuth becomes RequireAnyClientCert or RequestClientCert, ClientCAs
// is unused, and ConnectionState.VerifiedChains stays empty); base's own
// VerifyConnection still runs, after the Reloader's. Fields such as
// NextProtos may be changed on the result or on clones of it.
func (r *Reloader) ServerConfig(base *tls.Config) *tls.Config {
	cfg := cloneOrNew(base)
	cfg.Certificates = nil
	cfg.GetCertificate = r.GetCertificate
	if r.cfg.CAFile == "" {
		return cfg
	}
	required := true
	switch cfg.ClientAuth {
	case tls.VerifyClientCertIfGiven, tls.RequestClientCert:
		required = false
		cfg.ClientAuth = tls.RequestClientCert
	default:
		cfg.ClientAuth = tls.RequireAnyClientCert
	}
	cfg.ClientCAs = nil
	next := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) > 0 || required {
			if err := r.VerifyClientConnection(cs); err != nil {
				return err
			}
		}
		if next != nil {
			return next(cs)
		}
		return nil
	}
	return cfg
}

// ClientConfig is base (nil: an empty config with TLS 1.2 minimum) with the
// Reloader's certificate offered and the CA pool as it is now as RootCAs.
// Build one per connection (the pool is read at this call); set ServerName
// on it as usual.
func (r *Reloader) ClientConfig(base *tls.Config) *tls.Config {
	cfg := cloneOrNew(base)
	cfg.Certificates = nil
	cfg.GetClientCertificate = r.GetClientCertificate
	if pool := r.CAPool(); pool != nil {
		cfg.RootCAs = pool
	}
	return cfg
}

func cloneOrNew(base *tls.Config) *tls.Config {
	if base == nil {
		return &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return base.Clone()
}
