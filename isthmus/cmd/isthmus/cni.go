package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"isthmus.dev/cni"
)

const cniUsage = `isthmus cni: the pod network behind the agents (kube-router, Calico or custom).

Commands:
  validate  check a network config against the provider rules
  render    write the CNI conflist and the provider's manifests into a directory
  install   write the node's CNI conflist into the CNI config directory

The network config is YAML in the shape of k0s's spec.network:
  provider: kuberouter | calico | custom   (default kuberouter)
  podCIDR, serviceCIDR, clusterDomain, nodeCIDRMaskSize, nodeCIDRMaskSizeIPv6,
  dualStack{enabled, IPv6podCIDR, IPv6serviceCIDR}, nodes{architectures, windows},
  calico{mode, overlay, vxlanPort, vxlanVNI, mtu, wireguard, ...},
  kuberouter{hairpin, ipMasq, autoMTU, mtu, metricsPort, extraArgs}, images{...}

Run 'isthmus cni COMMAND --help' for a command's flags.
`

var cniCommands = []command{
	{"validate", runCNIValidate},
	{"render", runCNIRender},
	{"install", runCNIInstall},
}

func runCNI(e env, args []string) error {
	return subDispatch(e, "isthmus cni", cniUsage, cniCommands, args)
}

const cniValidateUsage = `isthmus cni validate --config FILE [--print]

Reads the network config FILE (YAML; unknown fields are errors), fills the
defaults and checks every rule: provider limits (kube-router: no dual-stack,
no Windows nodes; Calico: no armv7, vxlan/ipip/bird, VXLAN port and VNI),
CIDR families, sizes and overlaps, MTUs and images. Prints "FILE: valid"
(exit status 0), or every broken rule with the field and the allowed
values (exit status 1). Writes nothing; --print writes the effective config
(defaults filled) to stdout, and the verdict to stderr.
`

func runCNIValidate(e env, args []string) error {
	fs := newFlagSet(e, "isthmus cni validate", cniValidateUsage)
	config := fs.String("config", "", "network config file (YAML), required")
	print := fs.Bool("print", false, "print the effective config, defaults filled, as YAML")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	c, err := loadValid(*config)
	if err != nil {
		return err
	}
	verdict := e.Stdout
	if *print {
		out, err := yaml.Marshal(c)
		if err != nil {
			return fmt.Errorf("encode config: %w", err)
		}
		if _, err := e.Stdout.Write(out); err != nil {
			return err
		}
		verdict = e.Stderr
	}
	fmt.Fprintf(verdict, "%s: valid (provider %s, podCIDR %s, serviceCIDR %s)\n", *config, c.Provider, c.PodCIDR, c.ServiceCIDR)
	return nil
}

const cniRenderUsage = `isthmus cni render --config FILE --out DIR [--force] [--node-pod-cidr CIDR] [--node-name NAME] [--state-file PATH]

Reads the network config FILE, validates it, and writes:
  DIR/cni/10-kuberouter.conflist or DIR/cni/10-calico.conflist (cniVersion 1.0.0)
  DIR/manifests/kuberouter/                      kube-router: RBAC, ConfigMap, DaemonSet
  DIR/manifests/calico-crds/, DIR/manifests/calico/  Calico: CRDs; RBAC, ConfigMap,
                                                 calico-node DaemonSet, kube-controllers
Every manifest is checked to decode strictly with client-go's scheme before
anything is written. When the conflist or a stack folder exists, nothing is
written unless --force; with --force each stack folder is replaced as a
whole, atomically. Provider custom writes no conflist and no manifests.
Prints every file written.

The provider is recorded in the state file (default DIR/.isthmus-cni-state.json)
on the first render; rendering another provider later is refused, --force
or not: changing the pod network provider needs a full cluster redeployment.

Without --node-pod-cidr the kube-router conflist has no subnet: kube-router
fills in each node's spec.podCIDR. With it, the conflist is this node's.
`

func runCNIRender(e env, args []string) error {
	fs := newFlagSet(e, "isthmus cni render", cniRenderUsage)
	config := fs.String("config", "", "network config file (YAML), required")
	out := fs.String("out", "", "output directory, required (created if missing)")
	force := fs.Bool("force", false, "replace the conflist and stack folders that exist (without it, nothing is written if any exists)")
	node := nodeFlags(fs)
	state := fs.String("state-file", "", "provider lock file (default DIR/"+cni.StateFileName+")")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return required("--out DIR", "the directory to write the conflist and manifests into")
	}
	c, n, err := loadValidFor(*config, node)
	if err != nil {
		return err
	}
	r, err := cni.Render(c, *out, cni.RenderOptions{Node: n, StateFile: *state, Force: *force})
	if err != nil {
		return cniWriteError(err)
	}
	if c.Provider == cni.Custom {
		fmt.Fprintln(e.Stderr, "provider custom: no conflist or manifests rendered; the pod network is yours")
	}
	for _, f := range r.Files {
		fmt.Fprintf(e.Stdout, "wrote %s (mode 0644)\n", abs(f))
	}
	return nil
}

// cniWriteError is err, with an existing target said as every command
// says it.
func cniWriteError(err error) error {
	var ee *cni.ExistsError
	if errors.As(err, &ee) {
		return &existsError{paths: ee.Paths}
	}
	return err
}

const cniInstallUsage = `isthmus cni install --config FILE [--cni-conf-dir DIR] [--force] [--node-pod-cidr CIDR] [--node-name NAME] [--state-file PATH]

Reads the network config FILE, validates it, and writes this node's CNI
conflist into the CNI config directory (default /etc/cni/net.d) through a
temporary file and a rename: the container runtime never reads half a file.
An existing conflist is replaced only with --force. Provider custom installs
nothing. The provider is recorded in the state file (default
/var/lib/isthmus/cni-state.json); installing another provider later is
refused: it needs a full cluster redeployment.

For kube-router, --node-pod-cidr (this node's spec.podCIDR) gives the
conflist its subnet; without it kube-router fills it in when it starts.
`

func runCNIInstall(e env, args []string) error {
	fs := newFlagSet(e, "isthmus cni install", cniInstallUsage)
	config := fs.String("config", "", "network config file (YAML), required")
	dir := fs.String("cni-conf-dir", "/etc/cni/net.d", "CNI config directory of the container runtime")
	force := fs.Bool("force", false, "replace the conflist if it exists")
	node := nodeFlags(fs)
	state := fs.String("state-file", cni.DefaultInstallStateFile, "provider lock file")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	c, n, err := loadValidFor(*config, node)
	if err != nil {
		return err
	}
	path, err := cni.Install(c, *dir, cni.InstallOptions{Node: n, StateFile: *state, Force: *force})
	if errors.Is(err, cni.ErrCustomProvider) {
		fmt.Fprintln(e.Stderr, "provider custom: nothing installed; put your CNI config in", *dir)
		return nil
	}
	if err != nil {
		return cniWriteError(err)
	}
	fmt.Fprintf(e.Stdout, "wrote %s (mode 0644)\n", abs(path))
	return nil
}

// nodeFlags adds the per-node flags and returns their parser.
func nodeFlags(fs *pflag.FlagSet) func() (cni.NodeOptions, error) {
	cidr := fs.String("node-pod-cidr", "", "this node's slice of podCIDR (its spec.podCIDR), for kube-router's host-local IPAM")
	name := fs.String("node-name", "", "this node's Kubernetes name, for Calico's plugin (default: read /var/lib/calico/nodename)")
	return func() (cni.NodeOptions, error) {
		n := cni.NodeOptions{NodeName: *name}
		if *cidr != "" {
			p, err := netip.ParsePrefix(*cidr)
			if err != nil {
				return n, usageErrorf("--node-pod-cidr %q: not a CIDR (e.g. 10.244.3.0/24): %w", *cidr, err)
			}
			n.PodCIDR = p
		}
		return n, nil
	}
}

// loadValidFor is loadValid and the node flags, checked against the
// config: a conflist the valid config cannot make for this node is the
// fault of --node-pod-cidr.
func loadValidFor(path string, node func() (cni.NodeOptions, error)) (cni.Config, cni.NodeOptions, error) {
	n, err := node()
	if err != nil {
		return cni.Config{}, n, err
	}
	c, err := loadValid(path)
	if err != nil {
		return c, n, err
	}
	if n.PodCIDR.IsValid() {
		if _, err := c.Conflist(n); err != nil && !errors.Is(err, cni.ErrCustomProvider) {
			return c, n, usageErrorf("--node-pod-cidr: %w", err)
		}
	}
	return c, n, nil
}

// loadValid reads and validates the network config at path: a missing
// --config is a usage error, an invalid config a failed check.
func loadValid(path string) (cni.Config, error) {
	if path == "" {
		return cni.Config{}, required("--config FILE", "the network config (YAML, the shape of k0s's spec.network)")
	}
	c, err := cni.Load(path)
	if err != nil {
		return c, err
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%s is not valid:\n%w", path, err)
	}
	return c, nil
}
