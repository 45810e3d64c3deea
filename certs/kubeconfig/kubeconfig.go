// Package kubeconfig writes the kubeconfig proxy-server uses to talk to
// kube-apiserver (TokenReview for agent tokens, Leases for the server
// count), and reads the certificates a kubeconfig holds for expiry checks.
package kubeconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	clientcmdv1 "k8s.io/client-go/tools/clientcmd/api/v1"

	"isthmus.dev/certs"
	"isthmus.dev/certs/configfile"
)

// Config is a kubeconfig with one cluster, one user authenticated by a
// client certificate, and one context, all data embedded.
type Config struct {
	// Server is kube-apiserver's URL, https://host:port. Required.
	Server string
	// ServerCA is the PEM bundle that verifies kube-apiserver's serving
	// certificate. Required.
	ServerCA []byte
	// TLSServerName overrides the name the serving certificate is checked
	// against; "" means the host of Server.
	TLSServerName string
	// ClientCert and ClientKey are the user's PEM certificate (client
	// auth, signed by a CA kube-apiserver trusts for clients) and key.
	// Required.
	ClientCert, ClientKey []byte
	// Cluster names the cluster entry; "" means "kubernetes".
	Cluster string
	// User names the user entry; "" means certs.KubeconfigUser.
	User string
}

// Validate checks every field, and that the client certificate is one.
func (c Config) Validate() error {
	u, err := url.Parse(c.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("kubeconfig: server %q: want kube-apiserver's https://host:port", c.Server)
	}
	if len(c.ServerCA) == 0 {
		return errors.New("kubeconfig: no CA for kube-apiserver's serving certificate")
	}
	if _, err := certs.ParseCertificatesPEM(c.ServerCA); err != nil {
		return fmt.Errorf("kubeconfig: kube-apiserver CA: %w", err)
	}
	pair, err := tls.X509KeyPair(c.ClientCert, c.ClientKey)
	if err != nil {
		return fmt.Errorf("kubeconfig: client certificate and key: %w", err)
	}
	leaf := pair.Leaf
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("kubeconfig: certificate %q is not for client auth", leaf.Subject.CommonName)
	}
	return nil
}

// Render validates c and returns the kubeconfig, checked by client-go's
// own validation.
func Render(c Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Cluster == "" {
		c.Cluster = "kubernetes"
	}
	if c.User == "" {
		c.User = certs.KubeconfigUser
	}
	ctx := c.User + "@" + c.Cluster
	cfg := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{c.Cluster: {
			Server: c.Server, CertificateAuthorityData: c.ServerCA, TLSServerName: c.TLSServerName,
		}},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{c.User: {
			ClientCertificateData: c.ClientCert, ClientKeyData: c.ClientKey,
		}},
		Contexts:       map[string]*clientcmdapi.Context{ctx: {Cluster: c.Cluster, AuthInfo: c.User}},
		CurrentContext: ctx,
	}
	if err := clientcmd.Validate(cfg); err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	b, err := clientcmd.Write(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return b, nil
}

// Source is certificates found in one place of a kubeconfig.
type Source struct {
	Name  string // "FILE cluster NAME", "FILE user NAME", or a referenced file
	Certs []*x509.Certificate
}

// Certificates reads the kubeconfig at path and returns every certificate
// it embeds or names (cluster CAs and user client certificates; relative
// file names are resolved against the kubeconfig's directory), in a stable
// order.
func Certificates(path string) ([]Source, error) {
	cfg, err := LoadStrict(path)
	if err != nil {
		return nil, err
	}
	var out []Source
	add := func(what, name string, data []byte, file string) error {
		src := fmt.Sprintf("%s %s %s", path, what, name)
		if len(data) == 0 && file != "" {
			if !filepath.IsAbs(file) {
				file = filepath.Join(filepath.Dir(path), file)
			}
			if data, err = os.ReadFile(file); err != nil {
				return fmt.Errorf("kubeconfig %s: %s %s: %w", path, what, name, err)
			}
			src = file
		}
		if len(data) == 0 {
			return nil
		}
		cs, err := certs.ParseCertificatesPEM(data)
		if err != nil {
			return fmt.Errorf("kubeconfig %s: %s %s: %w", path, what, name, err)
		}
		out = append(out, Source{Name: src, Certs: cs})
		return nil
	}
	for _, name := range sortedKeys(cfg.Clusters) {
		cl := cfg.Clusters[name]
		if err := add("cluster", name, cl.CertificateAuthorityData, cl.CertificateAuthority); err != nil {
			return nil, err
		}
	}
	for _, name := range sortedKeys(cfg.AuthInfos) {
		u := cfg.AuthInfos[name]
		if err := add("user", name, u.ClientCertificateData, u.ClientCertificate); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// LoadStrict reads the kubeconfig at path as client-go does, after
// decoding it strictly (configfile): a key in the wrong case, an unknown
// (misspelt) key or one given twice, which client-go would ignore, is an
// error naming the key and its line.
func LoadStrict(path string) (*clientcmdapi.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if err := configfile.Decode(data, &clientcmdv1.Config{}); err != nil {
		sep := " "
		if len(configfile.KeyErrors(err)) > 1 {
			sep = "\n"
		}
		return nil, fmt.Errorf("kubeconfig %s:%s%w", path, sep, err)
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
