package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/certs/kubeconfig"
)

const kubeconfigUsage = `isthmus certs kubeconfig --dir DIR --server https://HOST:6443 [--kube-ca-cert F --kube-ca-key F] [--force]

Writes proxy-server's kubeconfig for kube-apiserver (agent token reviews,
leases): DIR/proxy-server.kubeconfig (0600; it holds a key), or
DIR/NAME.kubeconfig with --name. Certificates are embedded. The client
certificate (user --user, clientAuth) is issued by the Kubernetes cluster
CA that kube-apiserver trusts for clients (--kube-ca-cert/--kube-ca-key,
default kubeadm's /etc/kubernetes/pki/ca.crt and ca.key), or taken as is
with --client-cert/--client-key. kube-apiserver's serving certificate is
verified with --apiserver-ca (default --kube-ca-cert).
`

// kubeconfigOptions are the parsed flags of certs kubeconfig.
type kubeconfigOptions struct {
	outFlags
	keyFlags
	server, kubeCACert, kubeCAKey, apiserverCA, tlsServerName string
	user                                                      string
	groups                                                    []string
	clientCert, clientKey                                     string
	validity                                                  time.Duration
}

func parseCertsKubeconfig(e env, args []string) (kubeconfigOptions, error) {
	var o kubeconfigOptions
	fs := newFlagSet(e, "isthmus certs kubeconfig", kubeconfigUsage)
	o.outFlags.register(fs, "proxy-server")
	o.keyFlags.register(fs)
	fs.StringVar(&o.server, "server", "", "kube-apiserver's URL, https://host:port (required)")
	fs.StringVar(&o.kubeCACert, "kube-ca-cert", "/etc/kubernetes/pki/ca.crt", "Kubernetes CA certificate that signs the client certificate")
	fs.StringVar(&o.kubeCAKey, "kube-ca-key", "/etc/kubernetes/pki/ca.key", "Kubernetes CA key that signs the client certificate")
	fs.StringVar(&o.apiserverCA, "apiserver-ca", "", "CA bundle that verifies kube-apiserver's serving certificate (default --kube-ca-cert)")
	fs.StringVar(&o.tlsServerName, "tls-server-name", "", "name to check kube-apiserver's serving certificate against (default the host of --server)")
	fs.StringVar(&o.user, "user", certs.KubeconfigUser, "user name (the client certificate's common name)")
	fs.StringSliceVar(&o.groups, "group", nil, "groups (the client certificate's organizations)")
	fs.StringVar(&o.clientCert, "client-cert", "", "embed this client certificate instead of issuing one (with --client-key)")
	fs.StringVar(&o.clientKey, "client-key", "", "key of --client-cert")
	fs.DurationVar(&o.validity, "validity", certs.DefaultValidity, "validity of the issued client certificate")
	if err := parseNoArgs(fs, args); err != nil {
		return o, err
	}
	if err := o.outFlags.check(); err != nil {
		return o, err
	}
	if o.server == "" {
		return o, required("--server", "kube-apiserver's URL, https://host:port")
	}
	if (o.clientCert == "") != (o.clientKey == "") {
		return o, usageErrorf("--client-cert and --client-key go together: give both or neither")
	}
	if o.validity <= 0 {
		return o, usageErrorf("--validity %v: must be positive (e.g. 8760h)", o.validity)
	}
	if o.clientCert == "" {
		if _, err := o.spec(); err != nil {
			return o, err
		}
	}
	if o.apiserverCA == "" {
		o.apiserverCA = o.kubeCACert
	}
	return o, nil
}

func runCertsKubeconfig(e env, args []string) error {
	o, err := parseCertsKubeconfig(e, args)
	if err != nil {
		return err
	}
	serverCA, err := os.ReadFile(o.apiserverCA)
	if err != nil {
		return fmt.Errorf("--apiserver-ca: %w", err)
	}
	cfg := kubeconfig.Config{Server: o.server, ServerCA: serverCA, TLSServerName: o.tlsServerName, User: o.user}
	issued, err := o.clientPair(e, &cfg)
	if err != nil {
		return err
	}
	b, err := kubeconfig.Render(cfg)
	if err != nil {
		return err
	}
	path := o.path(".kubeconfig")
	if err := o.write(e, []certs.File{{Path: path, Data: b, Mode: 0o600}}); err != nil {
		return err
	}
	issued()
	fmt.Fprintf(e.Stdout, "proxy-server: --kubeconfig=%s\n", abs(path))
	fmt.Fprintf(e.Stdout, "kube-apiserver sees user %q; for agent token reviews bind it to system:auth-delegator:\n", o.user)
	fmt.Fprintf(e.Stdout, "  kubectl create clusterrolebinding %s --clusterrole=system:auth-delegator --user=%s\n",
		strings.ReplaceAll(o.user, ":", "-"), o.user)
	return nil
}

// clientPair puts the client certificate and key into cfg: read from
// --client-cert/--client-key, or issued by the Kubernetes CA (then the
// returned func describes it).
func (o *kubeconfigOptions) clientPair(e env, cfg *kubeconfig.Config) (func(), error) {
	var err error
	if o.clientCert != "" {
		if cfg.ClientCert, err = os.ReadFile(o.clientCert); err != nil {
			return nil, fmt.Errorf("--client-cert: %w", err)
		}
		if cfg.ClientKey, err = os.ReadFile(o.clientKey); err != nil {
			return nil, fmt.Errorf("--client-key: %w", err)
		}
		return func() {}, nil
	}
	key, err := o.spec()
	if err != nil {
		return nil, err
	}
	ca, err := certs.LoadCA(o.kubeCACert, o.kubeCAKey)
	if err != nil {
		return nil, fmt.Errorf("--kube-ca-cert/--kube-ca-key (the Kubernetes CA): %w", err)
	}
	r := certs.ClientRequest(o.user, o.groups...)
	r.Validity, r.Key = o.validity, key
	p, err := ca.Issue(r)
	if err != nil {
		return nil, err
	}
	cfg.ClientCert, cfg.ClientKey = p.CertPEM, p.KeyPEM
	return func() { describe(e, p, key, ca) }, nil
}
