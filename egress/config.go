// Package egress is the kube-apiserver side of isthmus: it renders and
// validates the EgressSelectorConfiguration (apiserver.k8s.io/v1beta1)
// that sends kube-apiserver's `cluster` traffic (kubelet calls, node, pod
// and service proxying, webhooks, aggregated APIs) through proxy-server,
// and it offers other control-plane programs a dialer that reaches the
// cluster network the same way, built from k8s.io/apiserver's own egress
// selector.
//
// Validation is kube-apiserver's: a rendered file is read back with
// k8s.io/apiserver's ReadEgressSelectorConfiguration, checked with its
// ValidateEgressSelectorConfiguration, and turned into its egress selector.
// Before that, this package refuses what kube-apiserver accepts and then
// fails on: an http:// TCP URL (a nil TLS configuration, a crash at
// start-up), relative paths (resolved against kube-apiserver's working
// directory), a URL without a port, a socket path longer than Linux allows,
// a client certificate that is not one.
package egress

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Mode is how kube-apiserver speaks to proxy-server: the proxy-server's
// --mode.
type Mode string

// The modes.
const (
	ModeGRPC        Mode = "grpc"
	ModeHTTPConnect Mode = "http-connect"
)

// Transport is how kube-apiserver reaches proxy-server's frontend.
type Transport string

// The transports.
const (
	TransportUDS Transport = "uds" // proxy-server --uds-name
	TransportTCP Transport = "tcp" // proxy-server --server-port with --server-cert/key/ca-cert
)

// Route is where one of the other egress selections (controlplane, etcd)
// goes.
type Route string

// The routes.
const (
	// RouteDirect writes the selection explicitly as Direct.
	RouteDirect Route = "direct"
	// RouteProxy sends it through proxy-server like `cluster`.
	RouteProxy Route = "proxy"
	// RouteOmit leaves the selection out (kube-apiserver then dials
	// directly too).
	RouteOmit Route = "omit"
)

// DefaultUDSName is the frontend socket of the Kubernetes konnectivity
// guide.
const DefaultUDSName = "/etc/kubernetes/konnectivity-server/konnectivity-server.socket"

// DefaultAgentAudience is the audience of the agents' service-account
// tokens, which kube-apiserver must accept (--api-audiences).
const DefaultAgentAudience = "system:konnectivity-server"

// DefaultServiceAccountIssuer is kubeadm's --service-account-issuer, which
// is kube-apiserver's --api-audiences when that flag is unset.
const DefaultServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// maxUDSName is the longest socket path Linux accepts (sun_path is 108
// bytes with the terminating NUL).
const maxUDSName = 107

// Config is the egress configuration to render. File paths are the paths
// kube-apiserver will read, so they must be absolute and, when rendering,
// exist on this machine (they are checked).
type Config struct {
	// Mode of the `cluster` connection; "" means ModeGRPC.
	Mode Mode
	// Transport to proxy-server; "" means TransportUDS. GRPC is only
	// possible over UDS (kube-apiserver refuses GRPC over TCP).
	Transport Transport
	// UDSName is the proxy-server's frontend socket (UDS only); "" means
	// DefaultUDSName.
	UDSName string
	// URL is https://host:port of the proxy-server's frontend (TCP only;
	// required).
	URL string
	// CABundle verifies proxy-server's frontend certificate (TCP only);
	// "" means the host's trusted roots.
	CABundle string
	// ClientCert and ClientKey are kube-apiserver's client certificate for
	// the frontend (TCP only; required).
	ClientCert, ClientKey string
	// TLSServerName is the name the frontend certificate is checked
	// against (TCP only); "" means the host of URL.
	TLSServerName string
	// ControlPlane and Etcd route the other two selections; "" means
	// RouteDirect.
	ControlPlane, Etcd Route
}

// DefaultConfig is GRPC over the default socket, controlplane and etcd
// Direct.
func DefaultConfig() Config {
	return Config{Mode: ModeGRPC, Transport: TransportUDS, UDSName: DefaultUDSName, ControlPlane: RouteDirect, Etcd: RouteDirect}
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = ModeGRPC
	}
	if c.Transport == "" {
		c.Transport = TransportUDS
	}
	if c.Transport == TransportUDS && c.UDSName == "" {
		c.UDSName = DefaultUDSName
	}
	if c.ControlPlane == "" {
		c.ControlPlane = RouteDirect
	}
	if c.Etcd == "" {
		c.Etcd = RouteDirect
	}
	return c
}

// Validate checks the shape of c: allowed values, and the fields each
// transport takes. The contents (paths, URL, certificates) are checked
// when rendering, on the configuration kube-apiserver would load.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	switch c.Mode {
	case ModeGRPC, ModeHTTPConnect:
	default:
		errs = append(errs, fmt.Errorf("mode %q: allowed are %q and %q", c.Mode, ModeGRPC, ModeHTTPConnect))
	}
	switch c.Transport {
	case TransportUDS:
		if c.URL != "" || c.CABundle != "" || c.ClientCert != "" || c.ClientKey != "" || c.TLSServerName != "" {
			errs = append(errs, errors.New("url, caBundle, clientCert, clientKey and tlsServerName are for transport tcp, not uds"))
		}
	case TransportTCP:
		if c.Mode == ModeGRPC {
			errs = append(errs, errors.New("mode grpc over transport tcp: kube-apiserver speaks GRPC to proxy-server only over a Unix socket; use transport uds, or mode http-connect for TCP"))
		}
		if c.UDSName != "" {
			errs = append(errs, errors.New("udsName is for transport uds, not tcp"))
		}
		if c.URL == "" {
			errs = append(errs, errors.New("transport tcp needs the url of proxy-server's frontend (https://host:port)"))
		}
		if strings.HasPrefix(c.URL, "http://") {
			errs = append(errs, fmt.Errorf("url %q: http:// passes kube-apiserver's validation and then crashes it at start-up (no TLS configuration); use https:// with client certificates", c.URL))
		}
		if c.ClientCert == "" || c.ClientKey == "" {
			errs = append(errs, errors.New("transport tcp needs kube-apiserver's client certificate and key (clientCert, clientKey): proxy-server requires mutual TLS"))
		}
		for _, f := range []struct{ field, path string }{{"caBundle", c.CABundle}, {"clientCert", c.ClientCert}, {"clientKey", c.ClientKey}} {
			if filepath.IsAbs(f.path) {
				if _, err := os.Stat(f.path); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", f.field, err))
				}
			}
		}
	default:
		errs = append(errs, fmt.Errorf("transport %q: allowed are %q and %q", c.Transport, TransportUDS, TransportTCP))
	}
	for _, r := range []struct {
		name  string
		route Route
	}{{"controlplane", c.ControlPlane}, {"etcd", c.Etcd}} {
		switch r.route {
		case RouteDirect, RouteProxy, RouteOmit:
		default:
			errs = append(errs, fmt.Errorf("%s route %q: allowed are %q, %q and %q", r.name, r.route, RouteDirect, RouteProxy, RouteOmit))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("egress configuration: %w", err)
	}
	return nil
}
