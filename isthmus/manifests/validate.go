package manifests

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"isthmus.dev/certs"
)

// FieldError is a setting Validate refuses: Field names the Options field
// ("ServerAddresses", "Server.UDSName"), so a command line can name its
// flag; Err says what is wrong and what is accepted.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + " " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// fieldErrors collects FieldErrors.
type fieldErrors []error

func (f *fieldErrors) add(field, format string, a ...any) {
	*f = append(*f, &FieldError{Field: field, Err: fmt.Errorf(format, a...)})
}

// Validate checks o (defaults filled). The error joins a *FieldError for
// every setting at fault.
func (o Options) Validate() error {
	o = o.WithDefaults()
	var errs fieldErrors
	if o.Mode != ModeGRPC && o.Mode != ModeHTTPConnect {
		errs.add("Mode", "%q: allowed are %q and %q", o.Mode, ModeGRPC, ModeHTTPConnect)
	}
	if o.Auth != AuthToken && o.Auth != AuthCertificates {
		errs.add("Auth", "%q: allowed are %q and %q", o.Auth, AuthToken, AuthCertificates)
	}
	o.validateServers(&errs)
	if o.AgentPort < 1 || o.AgentPort > 65535 {
		errs.add("AgentPort", "%d: want 1-65535", o.AgentPort)
	}
	if len(validation.IsDNS1123Label(o.Namespace)) > 0 {
		errs.add("Namespace", "%q: not a namespace name (lower-case letters, digits and '-')", o.Namespace)
	}
	if len(validation.IsDNS1123Subdomain(o.AgentCertSecret)) > 0 {
		errs.add("AgentCertSecret", "%q: not a Secret name (lower-case letters, digits, '-' and '.')", o.AgentCertSecret)
	}
	if strings.ContainsAny(o.Image, " \t\n") || o.Image == "" {
		errs.add("Image", "%q: not an image reference", o.Image)
	}
	switch o.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs.add("ImagePullPolicy", "%q: allowed are Always, IfNotPresent and Never", o.ImagePullPolicy)
	}
	if o.HostIPFamily != "ipv4" && o.HostIPFamily != "ipv6" {
		errs.add("HostIPFamily", "%q: allowed are ipv4 and ipv6", o.HostIPFamily)
	}
	if len(o.AgentCA) > 0 {
		if err := checkPEMCerts(o.AgentCA); err != nil {
			errs.add("AgentCA", "%w", err)
		}
	}
	if strings.TrimSpace(o.Audience) != o.Audience || strings.TrimSpace(o.ServerUser) != o.ServerUser {
		errs.add("Audience", "%q and server user %q: no surrounding spaces", o.Audience, o.ServerUser)
	}
	o.Server.validate(&errs)
	return errors.Join(errs...)
}

func (o Options) validateServers(errs *fieldErrors) {
	if len(o.ServerAddresses) == 0 {
		errs.add("ServerAddresses", "none given: name what agents dial: a load balancer, a DNS name, or each control-plane node")
	}
	for _, a := range o.ServerAddresses {
		if _, _, err := certs.SplitHosts([]string{a}); err != nil || strings.TrimSpace(a) == "" {
			errs.add("ServerAddresses", "%q: want a host name or an IP address, without a port (the port is the agent port)", a)
		}
	}
	switch {
	case o.Leases && len(o.ServerAddresses) > 1:
		errs.add("Leases", "count the servers behind ONE address (a load balancer); with %d addresses agents dial each once: drop leases, or give one address", len(o.ServerAddresses))
	case o.Leases && o.ServerCount != 0:
		errs.add("ServerCount", "%d with leases: the count comes from the servers' Leases; give one or the other", o.ServerCount)
	case !o.Leases && o.ServerCount < 1:
		errs.add("ServerCount", "%d: want 1 or more", o.ServerCount)
	case len(o.ServerAddresses) > 1 && o.ServerCount != len(o.ServerAddresses):
		errs.add("ServerCount", "%d with %d server addresses: agents hold one tunnel to each address, so the count is the number of addresses", o.ServerCount, len(o.ServerAddresses))
	}
}

// checkPEMCerts accepts PEM holding certificates only, at least one.
func checkPEMCerts(b []byte) error {
	n := 0
	for rest := b; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return errors.New("not PEM: want the CA certificate(s), -----BEGIN CERTIFICATE-----")
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("holds a %s: want certificates only (never a key)", block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
	}
	if n == 0 {
		return errors.New("no certificate in it")
	}
	return nil
}

func (s ServerOptions) validate(errs *fieldErrors) {
	for _, f := range []struct{ field, path string }{
		{"Server.UDSName", s.UDSName}, {"Server.ClusterCert", s.ClusterCert}, {"Server.ClusterKey", s.ClusterKey},
		{"Server.ClusterCACert", s.ClusterCACert}, {"Server.Kubeconfig", s.Kubeconfig},
		{"Server.Binary", s.Binary}, {"Server.EgressConfig", s.EgressConfig},
	} {
		if !filepath.IsAbs(f.path) || filepath.Clean(f.path) != f.path {
			errs.add(f.field, "%q: want a clean absolute path on the control-plane node", f.path)
		}
		if strings.ContainsAny(f.path, " \t\n\"'\\$%") {
			errs.add(f.field, "%q: no spaces, quotes, '\\', '$' or '%%' please (the path goes into a systemd unit and a Pod's args)", f.path)
		}
	}
	if len(s.UDSName) > 107 {
		errs.add("Server.UDSName", "%q: longer than the 107 bytes Linux allows a socket path", s.UDSName)
	}
}
