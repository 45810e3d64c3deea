package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

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

func runCNI(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, cniUsage)
		if len(args) == 0 {
			return errors.New("cni: no command given")
		}
		return pflag.ErrHelp
	}
	switch args[0] {
	case "validate":
		return runCNIValidate(args[1:])
	case "render":
		return runCNIRender(args[1:])
	case "install":
		return runCNIInstall(args[1:])
	}
	fmt.Fprint(os.Stderr, cniUsage)
	return fmt.Errorf("cni: unknown command %q", args[0])
}

const cniValidateUsage = `isthmus cni validate --config FILE [--print]

Reads the network config FILE (YAML; unknown fields are errors), fills the
defaults and checks every rule: provider limits (kube-router: no dual-stack,
no Windows nodes; Calico: no armv7, vxlan/ipip/bird, VXLAN port and VNI),
CIDR families, sizes and overlaps, MTUs and images. Prints every broken rule
with the field and the allowed values, and exits non-zero if there is one.
Writes nothing; --print writes the effective config (defaults filled) to
stdout.

Flags:
`

func runCNIValidate(args []string) error {
	fs := pflag.NewFlagSet("isthmus cni validate", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, cniValidateUsage, fs.FlagUsages()) }
	config := fs.String("config", "", "network config file (YAML), required")
	print := fs.Bool("print", false, "print the effective config, defaults filled, as YAML")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := loadValid(*config)
	if err != nil {
		return err
	}
	if *print {
		out, err := yaml.Marshal(c)
		if err != nil {
			return fmt.Errorf("encode config: %w", err)
		}
		_, _ = stdout.Write(out)
	}
	fmt.Fprintf(os.Stderr, "%s: valid (provider %s, podCIDR %s, serviceCIDR %s)\n", *config, c.Provider, c.PodCIDR, c.ServiceCIDR)
	return nil
}

const cniRenderUsage = `isthmus cni render --config FILE --out DIR [--node-pod-cidr CIDR] [--node-name NAME] [--state-file PATH]

Reads the network config FILE, validates it, and writes:
  DIR/cni/10-kuberouter.conflist or DIR/cni/10-calico.conflist (cniVersion 1.0.0)
  DIR/manifests/kuberouter/                      kube-router: RBAC, ConfigMap, DaemonSet
  DIR/manifests/calico-crds/, DIR/manifests/calico/  Calico: CRDs; RBAC, ConfigMap,
                                                 calico-node DaemonSet, kube-controllers
Each stack folder is replaced as a whole, atomically; every manifest is
checked to decode strictly with client-go's scheme before anything is
written. Provider custom writes no conflist and no manifests.

The provider is recorded in the state file (default DIR/.isthmus-cni-state.json)
on the first render; rendering another provider later is refused: changing
the pod network provider needs a full cluster redeployment.

Without --node-pod-cidr the kube-router conflist has no subnet: kube-router
fills in each node's spec.podCIDR. With it, the conflist is this node's.

Flags:
`

func runCNIRender(args []string) error {
	fs := pflag.NewFlagSet("isthmus cni render", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, cniRenderUsage, fs.FlagUsages()) }
	config := fs.String("config", "", "network config file (YAML), required")
	out := fs.String("out", "", "output directory, required")
	node := nodeFlags(fs)
	state := fs.String("state-file", "", "provider lock file (default DIR/"+cni.StateFileName+")")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("render: --out DIR is required")
	}
	c, err := loadValid(*config)
	if err != nil {
		return err
	}
	n, err := node()
	if err != nil {
		return err
	}
	r, err := cni.Render(c, *out, cni.RenderOptions{Node: n, StateFile: *state, Log: cliLogger()})
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	if r.Conflist != "" {
		fmt.Fprintln(stdout, r.Conflist)
	}
	for _, s := range r.Stacks {
		fmt.Fprintln(stdout, s)
	}
	return nil
}

const cniInstallUsage = `isthmus cni install --config FILE [--cni-conf-dir DIR] [--node-pod-cidr CIDR] [--node-name NAME] [--state-file PATH]

Reads the network config FILE, validates it, and writes this node's CNI
conflist into the CNI config directory (default /etc/cni/net.d) through a
temporary file and a rename: the container runtime never reads half a file.
Provider custom installs nothing. The provider is recorded in the state
file (default /var/lib/isthmus/cni-state.json); installing another provider
later is refused: it needs a full cluster redeployment.

For kube-router, --node-pod-cidr (this node's spec.podCIDR) gives the
conflist its subnet; without it kube-router fills it in when it starts.

Flags:
`

func runCNIInstall(args []string) error {
	fs := pflag.NewFlagSet("isthmus cni install", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, cniInstallUsage, fs.FlagUsages()) }
	config := fs.String("config", "", "network config file (YAML), required")
	dir := fs.String("cni-conf-dir", "/etc/cni/net.d", "CNI config directory of the container runtime")
	node := nodeFlags(fs)
	state := fs.String("state-file", cni.DefaultInstallStateFile, "provider lock file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := loadValid(*config)
	if err != nil {
		return err
	}
	n, err := node()
	if err != nil {
		return err
	}
	path, err := cni.Install(c, *dir, cni.InstallOptions{Node: n, StateFile: *state, Log: cliLogger()})
	if errors.Is(err, cni.ErrCustomProvider) {
		fmt.Fprintln(os.Stderr, "provider custom: nothing installed; put your CNI config in", *dir)
		return nil
	}
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	fmt.Fprintln(stdout, path)
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
				return n, fmt.Errorf("--node-pod-cidr %q: not a CIDR: %w", *cidr, err)
			}
			n.PodCIDR = p
		}
		return n, nil
	}
}

func loadValid(path string) (cni.Config, error) {
	if path == "" {
		return cni.Config{}, errors.New("--config FILE is required")
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

func cliLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
