package egress

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/server/egressselector"
)

// Load reads an EgressSelectorConfiguration the way kube-apiserver does
// at start-up (k8s.io/apiserver's ReadEgressSelectorConfiguration, then
// ValidateEgressSelectorConfiguration, then NewEgressSelector, which loads
// the TCP client certificates), and refuses in addition what kube-apiserver
// accepts but then crashes or fails on, and a `cluster` selection that
// does not go through proxy-server. Every problem found is reported.
func Load(path string) (*apiserver.EgressSelectorConfiguration, error) {
	if path == "" {
		return nil, errors.New("egress configuration: no file given")
	}
	return load(path, path)
}

// load is Load with name standing for path in messages.
func load(path, name string) (*apiserver.EgressSelectorConfiguration, error) {
	if err := checkKeys(path); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cfg, err := egressselector.ReadEgressSelectorConfiguration(path)
	if err != nil {
		return nil, fmt.Errorf("%s: kube-apiserver's loader: %w", name, err)
	}
	if cfg == nil {
		return nil, fmt.Errorf("%s: kube-apiserver's loader returned no configuration", name)
	}
	errs := check(cfg)
	if verrs := egressselector.ValidateEgressSelectorConfiguration(cfg); len(verrs) > 0 {
		errs = append(errs, fmt.Errorf("kube-apiserver's validation: %w", verrs.ToAggregate()))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %w", name, errors.Join(errs...))
	}
	if _, err := egressselector.NewEgressSelector(cfg); err != nil {
		return nil, fmt.Errorf("%s: kube-apiserver's egress selector: %w", name, err)
	}
	return cfg, nil
}

// check finds what kube-apiserver's validation lets through but
// kube-apiserver then crashes or fails on. It must not assume the
// configuration is valid otherwise (it runs before that validation, so
// that NewEgressSelector never sees what makes it panic).
func check(cfg *apiserver.EgressSelectorConfiguration) []error {
	var errs []error
	cluster := false
	for _, s := range cfg.EgressSelections {
		name := strings.ToLower(s.Name)
		c := s.Connection
		if name == "cluster" {
			cluster = true
			if c.ProxyProtocol == apiserver.ProtocolDirect {
				errs = append(errs, errors.New("egress selection cluster is Direct: kube-apiserver would reach nodes and pods directly, not through proxy-server"))
			}
		}
		if c.Transport == nil {
			continue
		}
		prefix := "egress selection " + name + ": "
		if c.ProxyProtocol == apiserver.ProtocolGRPC && c.Transport.TCP != nil {
			errs = append(errs, errors.New(prefix+"GRPC over TCP: kube-apiserver speaks GRPC to proxy-server only over a Unix socket (transport.uds); use HTTPConnect for TCP"))
			continue
		}
		if u := c.Transport.UDS; u != nil {
			errs = append(errs, prefixed(prefix, checkUDS(u.UDSName))...)
		}
		if t := c.Transport.TCP; t != nil && c.Transport.UDS == nil {
			errs = append(errs, prefixed(prefix, checkTCP(t))...)
		}
	}
	if !cluster {
		errs = append(errs, errors.New("no egress selection named cluster: kube-apiserver would reach nodes and pods directly, not through proxy-server"))
	}
	return errs
}

func prefixed(prefix string, errs []error) []error {
	for i, e := range errs {
		errs[i] = fmt.Errorf("%s%w", prefix, e)
	}
	return errs
}

func checkUDS(name string) []error {
	switch {
	case name == "":
		return nil // kube-apiserver's validation says it
	case strings.HasPrefix(name, "unix:"):
		return []error{fmt.Errorf("udsName %q: a path without unix:// in front", name)}
	case !filepath.IsAbs(name):
		return []error{fmt.Errorf("udsName %q is relative: kube-apiserver would resolve it against its own working directory; give an absolute path", name)}
	case len(name) > maxUDSName:
		return []error{fmt.Errorf("udsName %q is %d bytes long: Linux socket paths are at most %d", name, len(name), maxUDSName)}
	}
	return nil
}

func checkTCP(t *apiserver.TCPTransport) []error {
	u, err := url.Parse(t.URL)
	if err != nil {
		return []error{fmt.Errorf("url %q: %w", t.URL, err)}
	}
	switch u.Scheme {
	case "http":
		return []error{fmt.Errorf("url %q: http:// passes kube-apiserver's validation and then crashes it at start-up (no TLS configuration); use https:// with client certificates", t.URL)}
	case "https":
	default:
		return nil // kube-apiserver's validation says it
	}
	var errs []error
	if u.Hostname() == "" || u.Port() == "" {
		errs = append(errs, fmt.Errorf("url %q: want https://host:port, with the port of proxy-server's frontend (--server-port)", t.URL))
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		errs = append(errs, fmt.Errorf("url %q: nothing but https://host:port is used; drop the rest", t.URL))
	}
	if t.TLSConfig == nil {
		return errs // kube-apiserver's validation says it
	}
	return append(errs, checkTLS(t.TLSConfig)...)
}

func checkTLS(c *apiserver.TLSConfig) []error {
	var errs []error
	for _, f := range []struct{ field, path string }{{"caBundle", c.CABundle}, {"clientCert", c.ClientCert}, {"clientKey", c.ClientKey}} {
		if f.path != "" && !filepath.IsAbs(f.path) {
			errs = append(errs, fmt.Errorf("tlsConfig.%s %q is relative: kube-apiserver would resolve it against its own working directory; give an absolute path", f.field, f.path))
		}
	}
	if len(errs) > 0 || c.ClientCert == "" || c.ClientKey == "" {
		return errs
	}
	if _, err := os.Stat(c.ClientCert); err != nil {
		return append(errs, fmt.Errorf("tlsConfig.clientCert: %w", err))
	}
	if _, err := os.Stat(c.ClientKey); err != nil {
		return append(errs, fmt.Errorf("tlsConfig.clientKey: %w", err))
	}
	pair, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
	if err != nil {
		return append(errs, fmt.Errorf("tlsConfig.clientCert and clientKey: %w", err))
	}
	leaf := pair.Leaf
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		errs = append(errs, fmt.Errorf("tlsConfig.clientCert %s (%q) is not a client certificate (no clientAuth usage)", c.ClientCert, leaf.Subject.CommonName))
	}
	if now := time.Now(); now.After(leaf.NotAfter) {
		errs = append(errs, fmt.Errorf("tlsConfig.clientCert %s expired at %s", c.ClientCert, leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	if c.CABundle != "" {
		b, err := os.ReadFile(c.CABundle)
		if err != nil {
			return append(errs, fmt.Errorf("tlsConfig.caBundle: %w", err))
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			errs = append(errs, fmt.Errorf("tlsConfig.caBundle %s holds no PEM certificate", c.CABundle))
		}
	}
	return errs
}
