package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"isthmus.dev/isthmus/manifests"
)

const manifestsUsage = `isthmus manifests --server-address ADDR --out DIR|- [flags]

Renders everything to run isthmus on Kubernetes, as kubeadm's "Set up
Konnectivity service" guide and k0s do:
  - proxy-agent as a DaemonSet on every node (projected service-account
    token with the agent audience, or a client certificate from a Secret),
    its ServiceAccount, and RBAC to count Leases;
  - proxy-server beside each kube-apiserver, as a static Pod or a systemd
    unit, and its RBAC (TokenReview through system:auth-delegator; Leases);
  - kube-apiserver's egress configuration and flags.

--out DIR writes a directory (nothing at all if any of its files exists,
unless --force) and prints its index (also DIR/README.md): which file goes
where, in which order, and how to check each step:
  DIR/cluster.yaml                                    kubectl apply
  DIR/control-plane/konnectivity-server.yaml          /etc/kubernetes/manifests/
  DIR/control-plane/konnectivity-server.service       or systemd
  DIR/kube-apiserver/egress-selector-configuration.yaml, flags.txt
--out - prints the cluster objects only, one YAML stream:
  isthmus manifests --server-address 10.0.0.10 --out - | kubectl apply --server-side -f -
Every object decodes strictly with client-go's scheme. The Helm chart
(deploy/helm/isthmus) renders the same cluster objects from the same
settings.

Servers: agents dial --server-address: one address (a load balancer, a DNS
name, or the only control-plane node) or one per proxy-server (repeat the
flag, or separate with commas). Behind one address, the number of servers
is --server-count, or with --leases the number of live server Leases.
`

// manifestsFlags are the parsed flags of isthmus manifests.
type manifestsFlags struct {
	opts        manifests.Options
	out         string
	force       bool
	mode, auth  string
	pullPolicy  string
	agentCAFile string
	cpu, memory string
}

func parseManifests(e env, args []string) (*manifestsFlags, error) {
	f := &manifestsFlags{}
	d := manifests.DefaultOptions()
	o, s := &f.opts, &f.opts.Server
	fs := newFlagSet(e, "isthmus manifests", manifestsUsage)
	fs.StringVar(&f.out, "out", "", `directory to write, or "-" for the cluster objects on stdout (required)`)
	fs.BoolVar(&f.force, "force", false, "replace the files of --out DIR that exist")
	fs.StringSliceVar(&o.ServerAddresses, "server-address", nil, "what agents dial: one load balancer or DNS name, or each proxy-server's host (required; repeat or comma-separate)")
	fs.StringVar(&f.mode, "mode", string(d.Mode), "proxy-server's frontend toward kube-apiserver: grpc or http-connect")
	fs.StringVar(&f.auth, "auth", string(d.Auth), "how agents authenticate: token (projected service-account token, TokenReview) or certificates (client certificate from a Secret)")
	fs.IntVar(&o.AgentPort, "agent-port", d.AgentPort, "proxy-server's agent port")
	fs.IntVar(&o.ServerCount, "server-count", 0, "number of proxy-servers (0: one per --server-address); not with --leases")
	fs.BoolVar(&o.Leases, "leases", false, "servers publish Leases and agents count them (one --server-address: a load balancer)")
	fs.StringVar(&o.Image, "image", d.Image, "image with /proxy-server and /proxy-agent ('make image')")
	fs.StringVar(&f.pullPolicy, "image-pull-policy", string(d.ImagePullPolicy), "Always, IfNotPresent or Never")
	fs.StringVar(&o.Namespace, "namespace", d.Namespace, "namespace of the agents, the server's static Pod and the Leases")
	fs.StringVar(&o.Audience, "agent-audience", d.Audience, "audience of the agents' tokens (proxy-server --authentication-audience; added to kube-apiserver's --api-audiences)")
	fs.StringVar(&o.ServerUser, "server-user", d.ServerUser, "user of proxy-server's kubeconfig (bound to system:auth-delegator, and to the lease Role)")
	fs.StringVar(&f.agentCAFile, "agent-ca-file", "", "CA bundle agents verify the agent port with, shipped in a ConfigMap (default: the cluster CA, the service account's ca.crt)")
	fs.StringVar(&o.AgentCertSecret, "agent-cert-secret", d.AgentCertSecret, "kubernetes.io/tls Secret with the agents' client certificate (--auth certificates)")
	fs.StringVar(&o.HostIPFamily, "host-ip-family", d.HostIPFamily, "agent identifier of the node's IP: ipv4, or ipv6 for single-stack IPv6 nodes")
	fs.StringVar(&f.cpu, "agent-cpu-request", "50m", "the agent container's CPU request")
	fs.StringVar(&f.memory, "agent-memory-request", "64Mi", "the agent container's memory request (no limit: it would kill the tunnel under a burst)")
	fs.StringVar(&s.UDSName, "uds-name", d.Server.UDSName, "proxy-server's frontend socket, shared with kube-apiserver (on the control-plane node)")
	fs.StringVar(&s.ClusterCert, "cluster-cert", d.Server.ClusterCert, "proxy-server's agent-port certificate on the node")
	fs.StringVar(&s.ClusterKey, "cluster-key", d.Server.ClusterKey, "its key")
	fs.StringVar(&s.ClusterCACert, "cluster-ca-cert", d.Server.ClusterCACert, "CA of the agents' certificates on the node (--auth certificates)")
	fs.StringVar(&s.Kubeconfig, "kubeconfig", d.Server.Kubeconfig, "proxy-server's kubeconfig on the node (token auth, leases)")
	fs.StringVar(&s.Binary, "server-binary", d.Server.Binary, "proxy-server on the node, for the systemd unit")
	fs.StringVar(&s.EgressConfig, "egress-config-path", d.Server.EgressConfig, "where kube-apiserver reads its egress configuration")
	fs.StringSliceVar(&s.ExistingAudiences, "existing-audiences", d.Server.ExistingAudiences, "audiences kube-apiserver accepts today (its --api-audiences, or else its --service-account-issuer); kept in --api-audiences")
	if err := parseNoArgs(fs, args); err != nil {
		return nil, err
	}
	return f, f.complete(fs)
}

// complete maps the string flags onto the options and checks them.
func (f *manifestsFlags) complete(fs *pflag.FlagSet) error {
	if f.out == "" {
		return required("--out", `a directory to write, or "-" for the cluster objects on stdout`)
	}
	if len(f.opts.ServerAddresses) == 0 {
		return required("--server-address", "what agents dial (a load balancer, a DNS name, or each control-plane node)")
	}
	o := &f.opts
	o.Mode, o.Auth, o.ImagePullPolicy = manifests.Mode(f.mode), manifests.Auth(f.auth), corev1.PullPolicy(f.pullPolicy)
	reqs := corev1.ResourceList{}
	for name, v := range map[corev1.ResourceName]struct{ flag, val string }{
		corev1.ResourceCPU: {"--agent-cpu-request", f.cpu}, corev1.ResourceMemory: {"--agent-memory-request", f.memory},
	} {
		q, err := resource.ParseQuantity(v.val)
		if err != nil {
			return usageErrorf("%s %q: not a quantity (e.g. 50m, 64Mi): %v", v.flag, v.val, err)
		}
		reqs[name] = q
	}
	o.AgentResources = corev1.ResourceRequirements{Requests: reqs}
	if f.agentCAFile != "" {
		b, err := os.ReadFile(f.agentCAFile)
		if err != nil {
			return fmt.Errorf("--agent-ca-file: %w", err)
		}
		o.AgentCA = b
	}
	if fs.Changed("server-count") && o.ServerCount == 0 {
		return usageErrorf("--server-count 0: want 1 or more (leave it out for one per --server-address)")
	}
	return asUsage(flagErrors(o.Validate()))
}

// optionFlags are the flags of the Options fields, to name the flag at
// fault in Validate's errors.
var optionFlags = map[string]string{
	"Mode": "--mode", "Auth": "--auth", "ServerAddresses": "--server-address", "AgentPort": "--agent-port",
	"ServerCount": "--server-count", "Leases": "--leases", "Image": "--image", "ImagePullPolicy": "--image-pull-policy",
	"Namespace": "--namespace", "Audience": "--agent-audience", "ServerUser": "--server-user", "AgentCA": "--agent-ca-file",
	"AgentCertSecret": "--agent-cert-secret", "HostIPFamily": "--host-ip-family",
	"Server.UDSName": "--uds-name", "Server.ClusterCert": "--cluster-cert", "Server.ClusterKey": "--cluster-key",
	"Server.ClusterCACert": "--cluster-ca-cert", "Server.Kubeconfig": "--kubeconfig", "Server.Binary": "--server-binary",
	"Server.EgressConfig": "--egress-config-path",
}

// flagErrors rewrites Validate's field errors to name their flags.
func flagErrors(err error) error {
	if err == nil {
		return nil
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return err
	}
	var lines []string
	for _, e := range joined.Unwrap() {
		var fe *manifests.FieldError
		if errors.As(e, &fe) && optionFlags[fe.Field] != "" {
			lines = append(lines, optionFlags[fe.Field]+" "+fe.Err.Error())
		} else {
			lines = append(lines, e.Error())
		}
	}
	return errors.New(strings.Join(lines, "\n"))
}

func runManifests(e env, args []string) error {
	f, err := parseManifests(e, args)
	if err != nil {
		return err
	}
	r, err := manifests.Render(f.opts)
	if err != nil {
		return err
	}
	if f.out == "-" {
		b, err := r.ClusterYAML()
		if err != nil {
			return err
		}
		if _, err := e.Stdout.Write(b); err != nil {
			return err
		}
		fmt.Fprintln(e.Stderr, "note: proxy-server (static Pod or systemd unit) and kube-apiserver's egress configuration and flags are not Kubernetes objects: 'isthmus manifests --out DIR' writes them too")
		return nil
	}
	files, err := r.Files(f.out)
	if err != nil {
		return err
	}
	if err := writeFiles(e, files, f.force, 0o755); err != nil {
		return err
	}
	index, err := r.Index()
	if err != nil {
		return err
	}
	fmt.Fprintln(e.Stdout)
	fmt.Fprint(e.Stdout, index)
	return nil
}
