package main

import (
	"errors"
	"fmt"
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

func runEgress(args []string) error { return subDispatch("egress", egressUsage, egressCommands, args) }

const egressRenderUsage = `isthmus egress render [--mode grpc|http-connect] [--transport uds|tcp] [flags]

Writes kube-apiserver's egress configuration to --out (default
./egress-selector-configuration.yaml, mode 0644; never over an existing
file without --force; "-" prints it instead) and prints the flags to add
to kube-apiserver (--egress-selector-config-file, --api-audiences with the
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

func parseEgressRender(args []string) (renderOptions, error) {
	fs := newFlagSet("isthmus egress render", egressRenderUsage)
	var o renderOptions
	c := &o.cfg
	mode := fs.String("mode", string(egress.ModeGRPC), "grpc or http-connect (proxy-server's --mode)")
	transport := fs.String("transport", string(egress.TransportUDS), "uds or tcp")
	fs.StringVar(&c.UDSName, "uds-name", "", "proxy-server's frontend socket, an absolute path (UDS; default "+egress.DefaultUDSName+")")
	fs.StringVar(&c.URL, "url", "", "proxy-server's frontend, https://host:port (TCP)")
	pkiDir := fs.String("pki-dir", DefaultPKIDir, "where 'isthmus certs' wrote ca.crt and apiserver-client.crt/.key (TCP)")
	fs.StringVar(&c.CABundle, "ca-bundle", "", "CA that verifies the frontend certificate (TCP; default PKI-DIR/ca.crt)")
	fs.StringVar(&c.ClientCert, "client-cert", "", "kube-apiserver's client certificate (TCP; default PKI-DIR/apiserver-client.crt)")
	fs.StringVar(&c.ClientKey, "client-key", "", "its key (TCP; default PKI-DIR/apiserver-client.key)")
	fs.StringVar(&c.TLSServerName, "tls-server-name", "", "name to check the frontend certificate against (TCP; default the host of --url)")
	controlplane := fs.String("controlplane", string(egress.RouteDirect), "the controlplane selection: direct, proxy (like cluster) or omit")
	etcd := fs.String("etcd", string(egress.RouteDirect), "the etcd selection: direct, proxy (like cluster) or omit")
	fs.StringVar(&o.out, "out", "egress-selector-configuration.yaml", `file to write, or "-" for standard output`)
	fs.StringVar(&o.configPath, "config-path", "", "path kube-apiserver will read the file at, for the printed flag (default: --out made absolute)")
	fs.StringVar(&o.audience, "agent-audience", egress.DefaultAgentAudience, "audience of the agents' service-account tokens: added to kube-apiserver's --api-audiences, and proxy-server's --authentication-audience")
	fs.StringVar(&o.agentNamespace, "agent-namespace", "kube-system", "namespace of the agents' service account (proxy-server's --agent-namespace)")
	fs.StringVar(&o.agentServiceAccount, "agent-service-account", "konnectivity-agent", "the agents' service account (proxy-server's --agent-service-account)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "proxy-server's kubeconfig for its token reviews, for its --kubeconfig (default PKI-DIR/proxy-server.kubeconfig, from 'isthmus certs kubeconfig')")
	fs.StringSliceVar(&o.keep, "existing-audiences", []string{egress.DefaultServiceAccountIssuer},
		"audiences kube-apiserver accepts today (its --api-audiences, or else its --service-account-issuer); kept in --api-audiences")
	fs.BoolVar(&o.force, "force", false, "replace --out if it exists")
	if err := parseNoArgs(fs, args); err != nil {
		return o, err
	}
	c.Mode, c.Transport = egress.Mode(*mode), egress.Transport(*transport)
	if c.Transport == egress.TransportTCP && !fs.Changed("mode") {
		c.Mode = egress.ModeHTTPConnect
	}
	c.ControlPlane, c.Etcd = egress.Route(*controlplane), egress.Route(*etcd)
	if c.Transport == egress.TransportTCP {
		def := func(p *string, name string) {
			if *p == "" {
				*p = filepath.Join(*pkiDir, name)
			}
			*p = abs(*p)
		}
		def(&c.CABundle, "ca.crt")
		def(&c.ClientCert, "apiserver-client.crt")
		def(&c.ClientKey, "apiserver-client.key")
	}
	if o.configPath == "" {
		o.configPath = abs(o.out)
	}
	if o.kubeconfig == "" {
		o.kubeconfig = filepath.Join(*pkiDir, "proxy-server.kubeconfig")
	}
	o.kubeconfig = abs(o.kubeconfig)
	return o, nil
}

func runEgressRender(args []string) error {
	o, err := parseEgressRender(args)
	if err != nil {
		return err
	}
	b, err := egress.Render(o.cfg)
	if err != nil {
		return err
	}
	if o.out == "-" {
		_, err := stdout.Write(b)
		return err
	}
	w := outFlags{dir: filepath.Dir(o.out), force: o.force}
	if err := w.write([]certs.File{{Path: o.out, Data: b, Mode: 0o644}}); err != nil {
		return err
	}
	cfg, err := egress.Load(o.out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "  %s\n", summary(cfg))
	fmt.Fprintln(stdout, "\nkube-apiserver flags to add:")
	for _, f := range egress.APIServerFlags(o.configPath, append(append([]string{}, o.keep...), o.audience)) {
		fmt.Fprintln(stdout, "  "+f)
	}
	fmt.Fprintln(stdout, "\nproxy-server flags to match:")
	for _, f := range proxyServerFlags(cfg) {
		fmt.Fprintln(stdout, "  "+f)
	}
	printAgentAuth(o)
	return nil
}

// printAgentAuth prints proxy-server's agent authentication flags: tokens
// (the default of kubeadm's and k0s's deployments), or client certificates.
func printAgentAuth(o renderOptions) {
	fmt.Fprintln(stdout, "and agent authentication, by the agents' service-account tokens (kubeadm's and k0s's way;")
	fmt.Fprintln(stdout, "the agents send a projected token with this audience: proxy-agent --service-account-token-path;")
	fmt.Fprintln(stdout, "leave --kubeconfig out when proxy-server runs in a pod: it then uses its in-cluster config):")
	for _, f := range []string{
		"--agent-namespace=" + o.agentNamespace,
		"--agent-service-account=" + o.agentServiceAccount,
		"--authentication-audience=" + o.audience,
		"--kubeconfig=" + o.kubeconfig,
	} {
		fmt.Fprintln(stdout, "  "+f)
	}
	fmt.Fprintln(stdout, "or by client certificates (proxy-agent --agent-cert/--agent-key; with both, an agent needs both):")
	fmt.Fprintln(stdout, "  --cluster-ca-cert=<the CA that signed the agents' certificates, 'isthmus certs agent'>")
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

const egressValidateUsage = `isthmus egress validate --config FILE

Loads FILE exactly as kube-apiserver does at start-up (k8s.io/apiserver's
ReadEgressSelectorConfiguration, ValidateEgressSelectorConfiguration and
egress selector, which loads the TCP client certificates), and checks in
addition what kube-apiserver accepts but then crashes or fails on (an
http:// TCP URL, relative paths, a URL without a port, an unusable client
certificate) and that the cluster selection goes through proxy-server.
Writes nothing; prints where each selection goes, or every problem found
(exit status 1).
`

func runEgressValidate(args []string) error {
	fs := newFlagSet("isthmus egress validate", egressValidateUsage)
	file := fs.String("config", "", "the EgressSelectorConfiguration file (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *file == "" && fs.NArg() == 1 {
		*file = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("validate: unexpected arguments %q", fs.Args())
	}
	if *file == "" {
		return errors.New("validate: --config FILE is required")
	}
	cfg, err := egress.Load(*file)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: valid for kube-apiserver\n  %s\n", *file, summary(cfg))
	return nil
}
