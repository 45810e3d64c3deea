package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"isthmus.dev/certs"
)

func tlsVersion(s string) (uint16, error) {
	switch s {
	case "", "VersionTLS12":
		return tls.VersionTLS12, nil
	case "VersionTLS13":
		return tls.VersionTLS13, nil
	case "VersionTLS10", "VersionTLS11":
		return 0, fmt.Errorf("--tls-min-version %s: TLS below 1.2 is not offered; use VersionTLS12 or VersionTLS13", s)
	}
	return 0, fmt.Errorf("--tls-min-version %q: allowed are VersionTLS12 and VersionTLS13", s)
}

func cipherSuites(names []string) ([]uint16, error) {
	if len(names) == 0 {
		return nil, nil
	}
	known := map[string]uint16{}
	for _, s := range tls.CipherSuites() {
		known[s.Name] = s.ID
	}
	var ids []uint16
	for _, n := range names {
		id, ok := known[strings.TrimSpace(n)]
		if !ok {
			return nil, fmt.Errorf("--cipher-suites: %q is not a secure TLS 1.2 cipher suite Go knows", n)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// serverTLS builds a server TLS config from files. With caFile, clients
// must present a certificate signed by it. The files are read again when
// they change (checked at most once a second, at handshakes): rotated
// certificates and CAs take effect without a restart, and files that do
// not load keep the previous ones in use (logged).
func serverTLS(certFile, keyFile, caFile string, c *Config, log *slog.Logger) (*tls.Config, error) {
	minV, err := tlsVersion(c.TLSMinVersion)
	if err != nil {
		return nil, err
	}
	suites, err := cipherSuites(c.CipherSuites)
	if err != nil {
		return nil, err
	}
	r, err := certs.NewReloader(certs.ReloaderConfig{CertFile: certFile, KeyFile: keyFile, CAFile: caFile, Log: log})
	if err != nil {
		return nil, err
	}
	base := &tls.Config{MinVersion: minV, CipherSuites: suites}
	if caFile != "" {
		base.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return r.ServerConfig(base), nil
}

// tlsListener wraps ln so that accepted connections speak TLS (the handshake
// runs on first read, under the frontend's header deadline).
func tlsListener(ln net.Listener, cfg *tls.Config) net.Listener { return tls.NewListener(ln, cfg) }
