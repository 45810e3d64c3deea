package main

import (
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"

	"k8s.io/apiserver/pkg/apis/apiserver"

	"isthmus.dev/certs"
	"isthmus.dev/egress"
)

const egressUsage = `isthmus egress: kube-apiserver's EgressSelectorConfiguration
(apiserver.k8s.io/v1beta1), which sends its traffic to nodes and pods
(kubectl logs/exec/port-forward, node/pod/service proxy, webhooks, aggregated
APIs) through proxy-server.

Commands:
  render    write the configuration file and print the kube-apiserver flags
            (and the matching proxy-server flags)
  validate  load a configuration file as kube-apiserver would, and say what
            it does or why kube-apiserver would refuse it or fail with it

Run 'isthmus egress COMMAND --help' for a command's flags.
`

var egressCommands = []command{
	{"render", runEgressRender},
	{"validate", runEgressValidate},
}

func runEgress(e env, args []string) error {
	return subDispatch(e, "isthmus egress", egressUsage, egressCommands, args)
}

const egressRenderUsage = `isthmus egress render --out FILE|- [--mode grpc|http-connect] [--transport uds|tcp] [flags]

Writes kube-apiserver's egress configuration to --out FILE (required; mode
0644; never over an existing file without --force), or prints it alone to
stdout with --out - . With a FILE it then prints the flags to add to
kube-apiserver (--egress-selector-config-file, --api-audiences with the
agents' token audience) and those proxy-server needs to match: its
frontend, and how it authenticates agents: by their service-account tokens
(kubeadm's and k0s's way: --agent-namespace, --agent-service-account,
--authentication-audience, --kubeconfig), or by client certificates
(--cluster-ca-cert).

The cluster selection goes through proxy-server, in one of:
  --mode grpc --transport uds           (default) GRPC over a Unix socket
  --mode http-connect --transport uds   HTTP CONNECT over a Unix socket
  --transport tcp --url https://H:P     HTTP CONNECT over TCP with mutual
                                        TLS (--mode defaults to http-connect)
controlplane and etcd are written as Direct unless --controlplane/--etcd
say otherwise. kube-apiserver speaks GRPC only over a Unix socket, and an
http:// URL crashes it: both are refused. The file is checked by loading it
with k8s.io/apiserver's own loader, validation and egress selector.
In TCP mode the certificate files default to kube-apiserver's client
certificate from 'isthmus certs' in --pki-dir; relative paths are made
absolute (kube-apiserver reads them from its own working directory).
`

// DefaultServerKubeconfig is proxy-server's kubeconfig on a control-plane
// node, as kubeadm's guide and the manifests place it.
const DefaultServerKubeconfig = "/etc/kubernetes/konnectivity-server.conf"

// renderOptions are the parsed flags of egress render.
type renderOptions struct {
	cfg        egress.Config
	out        string
	configPath string
	audience   string
	keep       []string
	force      bool
	// agent token authentication, for proxy-server's flags
	agentNamespace, agentServiceAccount, kubeconfig string
}

func parseEgressRender(e env, args []string) (renderOptions, error) {
	fs := newFlagSet(e, "isthmus egress render", egressRenderUsage)
	var o renderOptions
	c := &o.cfg
	mode := fs.String("mode", string(egress.ModeGRPC), "grpc or http-connect (proxy-server's --mode)")
	transport := fs.String("transport", string(egress.TransportUDS), "uds or tcp")
	fs.StringVar(&c.UDSName, "uds-name", "", "proxy-server's frontend socket, an absolute path (UDS; default "+egress.DefaultUDSName+")")
	fs.StringVar(&c.URL, "url", "", "proxy-server's frontend, https://host:port (TCP)")
	pkiDir := fs.String("pki-dir", "", "where 'isthmus certs' wrote ca.crt, apiserver-client.crt/.key (TCP) and proxy-server.kubeconfig")
	fs.StringVar(&c.CABundle, "ca-bundle", "", "CA that verifies the frontend certificate (TCP; default PKI-DIR/ca.crt)")
	fs.StringVar(&c.ClientCert, "client-cert", "", "kube-apiserver's client certificate (TCP; default PKI-DIR/apiserver-client.crt)")
	fs.StringVar(&c.ClientKey, "client-key", "", "its key (TCP; default PKI-DIR/apiserver-client.key)")
	fs.StringVar(&c.TLSServerName, "tls-server-name", "", "name to check the frontend certificate against (TCP; default the host of --url)")
	controlplane := fs.String("controlplane", string(egress.RouteDirect), "the controlplane selection: direct, proxy (like cluster) or omit")
	etcd := fs.String("etcd", string(egress.RouteDirect), "the etcd selection: direct, proxy (like cluster) or omit")
	fs.StringVar(&o.out, "out", "", `file to write, e.g. /etc/kubernetes/egress-selector-configuration.yaml, or "-" for standard output (required)`)
	fs.StringVar(&o.configPath, "config-path", "", "path kube-apiserver will read the file at, for the printed flag (default: --out made absolute)")
	fs.StringVar(&o.audience, "agent-audience", egress.DefaultAgentAudience, "audience of the agents' service-account tokens: added to kube-apiserver's --api-audiences, and proxy-server's --authentication-audience")
	fs.StringVar(&o.agentNamespace, "agent-namespace", "kube-system", "namespace of the agents' service account (proxy-server's --agent-namespace)")
	fs.StringVar(&o.agentServiceAccount, "agent-service-account", "konnectivity-agent", "the agents' service account (proxy-server's --agent-service-account)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "proxy-server's kubeconfig for its token reviews, for its --kubeconfig (default PKI-DIR/proxy-server.kubeconfig with --pki-dir, else "+DefaultServerKubeconfig+")")
	fs.StringSliceVar(&o.keep, "existing-audiences", []string{egress.DefaultServiceAccountIssuer},
		"audiences kube-apiserver accepts today (its --api-audiences, or else its --service-account-issuer); kept in --api-audiences")
	fs.BoolVar(&o.force, "force", false, "replace --out if it exists")
	if err := parseNoArgs(fs, args); err != nil {
		return o, err
	}
	if o.out == "" {
		return o, required("--out", `the file to write (e.g. --out /etc/kubernetes/egress-selector-configuration.yaml), or "-" for stdout`)
	}
	c.Mode, c.Transport = egress.Mode(*mode), egress.Transport(*transport)
	if c.Transport == egress.TransportTCP && !fs.Changed("mode") {
		c.Mode = egress.ModeHTTPConnect
	}
	c.ControlPlane, c.Etcd = egress.Route(*controlplane), egress.Route(*etcd)
	if c.Transport == egress.TransportTCP {
		if err := tcpFiles(c, *pkiDir); err != nil {
			return o, err
		}
	}
	if o.configPath == "" {
		o.configPath = abs(o.out)
	}
	switch {
	case o.kubeconfig == "" && *pkiDir != "":
		o.kubeconfig = filepath.Join(*pkiDir, "proxy-server.kubeconfig")
	case o.kubeconfig == "":
		o.kubeconfig = DefaultServerKubeconfig
	}
	o.kubeconfig = abs(o.kubeconfig)
	return o, nil
}

// tcpFiles fills kube-apiserver's client certificate, key and CA bundle
// (TCP mode) from pkiDir where not given, and makes them absolute.
func tcpFiles(c *egress.Config, pkiDir string) error {
	for _, f := range []struct {
		p          *string
		flag, name string
	}{{&c.CABundle, "--ca-bundle", "ca.crt"}, {&c.ClientCert, "--client-cert", "apiserver-client.crt"}, {&c.ClientKey, "--client-key", "apiserver-client.key"}} {
		if *f.p == "" && pkiDir == "" {
			return required(f.flag+" (or --pki-dir)", "kube-apiserver's client certificate, its key and the CA of the frontend, or the directory where 'isthmus certs' wrote them")
		}
		if *f.p == "" {
			*f.p = filepath.Join(pkiDir, f.name)
		}
		*f.p = abs(*f.p)
	}
	return nil
}

func runEgressRender(e env, args []string) error {
	o, err := parseEgressRender(e, args)
	if err != nil {
		return err
	}
	// The configuration is made of the flags alone: what kube-apiserver
	// would refuse is a bad flag value.
	b, err := egress.Render(o.cfg)
	if err != nil {
		return asUsage(err)
	}
	if o.out == "-" {
		if _, err := e.Stdout.Write(b); err != nil {
			return err
		}
		fmt.Fprintln(e.Stderr, "note: the kube-apiserver and proxy-server flags that go with it: 'isthmus egress render --out FILE' prints them")
		return nil
	}
	if err := writeFiles(e, []certs.File{{Path: o.out, Data: b, Mode: 0o644}}, o.force, 0o755); err != nil {
		return err
	}
	cfg, err := egress.Load(o.out)
	if err != nil {
		return err
	}
	w := e.Stdout
	fmt.Fprintf(w, "  %s\n", summary(cfg))
	fmt.Fprintln(w, "\nkube-apiserver flags to add:")
	for _, f := range egress.APIServerFlags(o.configPath, append(append([]string{}, o.keep...), o.audience)) {
		fmt.Fprintln(w, "  "+f)
	}
	fmt.Fprintln(w, "\nproxy-server flags to match:")
	for _, f := range proxyServerFlags(cfg) {
		fmt.Fprintln(w, "  "+f)
	}
	printAgentAuth(w, o)
	return nil
}

// printAgentAuth prints proxy-server's agent authentication flags: tokens
// (the default of kubeadm's and k0s's deployments), or client certificates.
func printAgentAuth(w io.Writer, o renderOptions) {
	fmt.Fprintln(w, "and agent authentication, by the agents' service-account tokens (kubeadm's and k0s's way;")
	fmt.Fprintln(w, "the agents send a projected token with this audience: proxy-agent --service-account-token-path;")
	fmt.Fprintln(w, "leave --kubeconfig out when proxy-server runs in a pod: it then uses its in-cluster config):")
	for _, f := range []string{
		"--agent-namespace=" + o.agentNamespace,
		"--agent-service-account=" + o.agentServiceAccount,
		"--authentication-audience=" + o.audience,
		"--kubeconfig=" + o.kubeconfig,
	} {
		fmt.Fprintln(w, "  "+f)
	}
	fmt.Fprintln(w, "or by client certificates (proxy-agent --agent-cert/--agent-key; with both, an agent needs both):")
	fmt.Fprintln(w, "  --cluster-ca-cert=<the CA that signed the agents' certificates, 'isthmus certs agent'>")
}

// proxyServerFlags are the proxy-server flags that match cfg's cluster
// selection.
func proxyServerFlags(cfg *apiserver.EgressSelectorConfiguration) []string {
	c := clusterConnection(cfg)
	if c == nil || c.Transport == nil {
		return nil
	}
	mode := "--mode=grpc"
	if c.ProxyProtocol == apiserver.ProtocolHTTPConnect {
		mode = "--mode=http-connect"
	}
	flags := []string{mode}
	if u := c.Transport.UDS; u != nil {
		flags = append(flags, "--uds-name="+u.UDSName, "--server-port=0")
	} else if t := c.Transport.TCP; t != nil {
		if u, err := url.Parse(t.URL); err == nil {
			flags = append(flags, "--server-port="+u.Port())
		}
		flags = append(flags, "--server-cert=<frontend certificate, 'isthmus certs frontend'>", "--server-key=<its key>")
		if t.TLSConfig != nil {
			flags = append(flags, "--server-ca-cert=<the CA that signed "+filepath.Base(t.TLSConfig.ClientCert)+">")
		}
	}
	return flags
}

func clusterConnection(cfg *apiserver.EgressSelectorConfiguration) *apiserver.Connection {
	for i, s := range cfg.EgressSelections {
		if strings.EqualFold(s.Name, "cluster") {
			return &cfg.EgressSelections[i].Connection
		}
	}
	return nil
}

// summary says where each selection goes, in one line.
func summary(cfg *apiserver.EgressSelectorConfiguration) string {
	var parts []string
	for _, s := range cfg.EgressSelections {
		c := s.Connection
		how := string(c.ProxyProtocol)
		if t := c.Transport; t != nil && t.UDS != nil {
			how += " over UDS " + t.UDS.UDSName
		} else if t != nil && t.TCP != nil {
			how += " over TCP " + t.TCP.URL
			if t.TCP.TLSConfig != nil {
				how += " (client certificate " + t.TCP.TLSConfig.ClientCert + ")"
			}
		}
		parts = append(parts, s.Name+": "+how)
	}
	return strings.Join(parts, "; ")
}

const egressValidateUsage = `isthmus egress validate --config FILE (or: isthmus egress validate FILE)

Loads FILE exactly as kube-apiserver does at start-up (k8s.io/apiserver's
ReadEgressSelectorConfiguration, ValidateEgressSelectorConfiguration and
egress selector, which loads the TCP client certificates), and checks in
addition what kube-apiserver accepts but then crashes or fails on (an
http:// TCP URL, relative paths, a URL without a port, an unusable client
certificate) and that the cluster selection goes through proxy-server.
Writes nothing; prints where each selection goes (exit status 0), or every
problem found (exit status 1).
`

func runEgressValidate(e env, args []string) error {
	fs := newFlagSet(e, "isthmus egress validate", egressValidateUsage)
	file := fs.String("config", "", "the EgressSelectorConfiguration file (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *file == "" && fs.NArg() == 1 {
		*file = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return usageErrorf("unexpected arguments %q (give one FILE, or --config FILE)", fs.Args())
	}
	if *file == "" {
		return required("--config FILE", "the EgressSelectorConfiguration file to check")
	}
	cfg, err := egress.Load(*file)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "%s: valid for kube-apiserver\n  %s\n", *file, summary(cfg))
	return nil
}
