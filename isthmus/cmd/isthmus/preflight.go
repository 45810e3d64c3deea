package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"isthmus.dev/cni"
	"isthmus.dev/cni/preflight"
)

const preflightUsage = `isthmus preflight --role controller|worker --provider kuberouter|calico|custom [flags]

Checks this host's ports against the required ports of an isolated control
plane (k0s's networking table), for its role and pod network provider:
  controller  listens on 6443 (kube-apiserver) and 8132 (proxy-server's agent
              port); with --peer: listens on 2380 (etcd) and 9443 (join API)
              and reaches them on every peer. Kubelets (10250) are reached
              through the tunnel: no route to the workers is needed.
  worker      listens on 10250 (kubelet); reaches every --controller on 6443
              and 8132 (outbound only); kube-router or Calico bird/ipip:
              listens on 179 and reaches every --peer on 179 (BGP); Calico
              vxlan: udp 4789 bound and sent to every --peer.
"Listens" is read from this network namespace's socket tables (/proc/net);
"reaches" is a TCP connect or a UDP probe, each bounded by --timeout. UDP
can only fail (ICMP port unreachable) or stay unproven (a warning).
Reads --config if given (provider, Calico mode and VXLAN port); writes
nothing but the table (stdout), with a fix for every failure. Exits
non-zero if a required check fails.

Flags:
`

func runPreflight(args []string) error {
	fs := pflag.NewFlagSet("isthmus preflight", pflag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, preflightUsage, fs.FlagUsages()) }
	o, err := parsePreflight(fs, args)
	if err != nil {
		return err
	}
	checks, err := preflight.Plan(o)
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	results := preflight.Runner{Timeout: o.Timeout}.Run(ctx, checks)
	if err := preflight.Print(stdout, results); err != nil {
		return err
	}
	if preflight.Failed(results) {
		return fmt.Errorf("preflight: required checks failed on this %s (see the fixes above)", o.Role)
	}
	return nil
}

func parsePreflight(fs *pflag.FlagSet, args []string) (preflight.Options, error) {
	o := preflight.Options{Ports: preflight.DefaultPorts()}
	role := fs.String("role", "", "this host's role: controller or worker (required)")
	provider := fs.String("provider", "", "pod network provider: kuberouter, calico or custom (default kuberouter, or the --config's)")
	config := fs.String("config", "", "network config file (YAML): provider, calico.mode and calico.vxlanPort are taken from it")
	fs.StringVar(&o.CalicoMode, "calico-mode", "", "Calico data plane: vxlan, ipip or bird (default vxlan, or the --config's)")
	fs.StringSliceVar(&o.Controllers, "controller", nil, "controller host(s) a worker must reach (repeat or comma-separate)")
	fs.StringSliceVar(&o.Peers, "peer", nil, "other nodes of the same role: controllers (etcd, join API) or workers (BGP, VXLAN)")
	ports := fs.StringArray("port", nil, "override a port, NAME=PORT, NAME one of "+strings.Join(preflight.PortNames, ", ")+" (repeatable)")
	fs.DurationVar(&o.Timeout, "timeout", 3*time.Second, "bound of each reachability probe")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.Role = preflight.Role(*role)
	if *config != "" {
		c, err := loadValid(*config)
		if err != nil {
			return o, err
		}
		if *provider != "" && cni.Provider(*provider) != c.Provider {
			return o, fmt.Errorf("--provider %s disagrees with provider %s of %s", *provider, c.Provider, *config)
		}
		*provider = string(c.Provider)
		if c.Calico != nil {
			if o.CalicoMode != "" && o.CalicoMode != c.Calico.Mode {
				return o, fmt.Errorf("--calico-mode %s disagrees with calico.mode %s of %s", o.CalicoMode, c.Calico.Mode, *config)
			}
			o.CalicoMode = c.Calico.Mode
			o.Ports.VXLAN = c.Calico.VXLANPort
		}
	}
	if *provider == "" {
		*provider = string(cni.KubeRouter)
	}
	o.Provider = cni.Provider(*provider)
	for _, p := range *ports {
		if err := o.Ports.Set(p); err != nil {
			return o, fmt.Errorf("--port: %w", err)
		}
	}
	return o, nil
}
