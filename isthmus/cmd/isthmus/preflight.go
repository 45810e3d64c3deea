package main

import (
	"context"
	"fmt"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"isthmus.dev/cni"
	"isthmus.dev/cni/preflight"
)

const preflightUsage = `isthmus preflight --role controller|worker [--provider kuberouter|calico|custom] [flags]

Checks this host's ports against the required ports of an isolated control
plane (k0s's networking table), for its role and pod network provider. A
port is either:
  must be free  its component is not installed yet (--not-installed): nothing
                else may hold the port, or the component will not start;
  must listen   its component is installed and should be running;
  must answer   a remote port this host must reach.
By default the isthmus daemon of the role is taken as not installed yet
(run preflight before installing it), everything else as running; after
installing, run it with --not-installed none.

  controller  kube-apiserver listens on 6443; proxy-server's agent port
              (--agent-port, 8132), admin (8133) and health (8134) ports;
              with --peer: etcd (2380) and the join API (9443) listen, and
              are reached on every peer. Kubelets (10250) are reached
              through the tunnel: no route to the workers is needed.
  worker      kubelet listens on 10250; proxy-agent's admin (8133) and
              health (8134) ports; every --controller answers on 6443 and
              on the agent port (outbound only: proxy-server is installed
              on the controllers first); the pod network: kube-router or
              Calico bird/ipip on tcp 179 (BGP, and every --peer answers),
              Calico vxlan on udp 4789 (bound, and sent to every --peer).

The agent port follows the deployment: --agent-port 8132 as k0s and
kubeadm's guide (ANP's own default is 8091). The admin and health ports are
this host's daemon's: proxy-server's --admin-port and --health-port on a
controller, proxy-agent's --admin-server-port and --health-server-port on a
worker (kubeadm's guide: 8133, 8134; 0: turned off, not checked). Other
ports of the table: --port NAME=PORT.

"Free" and "listens" are read from this network namespace's socket tables
(/proc/net); "answers" is a TCP connect or a UDP probe, each bounded by
--timeout. UDP can only fail (ICMP port unreachable) or stay unproven (a
warning). Reads --config if given (provider, Calico mode and VXLAN port);
writes nothing but the table (stdout), with a fix for every failure.
Exit status 1 if a required check fails, 2 on a usage error.
`

func runPreflight(e env, args []string) error {
	fs := newFlagSet(e, "isthmus preflight", preflightUsage)
	o, err := parsePreflight(fs, args)
	if err != nil {
		return err
	}
	checks, err := preflight.Plan(o)
	if err != nil {
		return asUsage(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	results := preflight.Runner{Timeout: o.Timeout}.Run(ctx, checks)
	if err := preflight.Print(e.Stdout, results); err != nil {
		return err
	}
	if preflight.Failed(results) {
		return fmt.Errorf("required checks failed on this %s (see the fixes above)", o.Role)
	}
	return nil
}

// preflightFlags are the flags parsePreflight maps onto preflight.Options.
type preflightFlags struct {
	role, provider, config string
	ports, notInstalled    []string
}

func parsePreflight(fs *pflag.FlagSet, args []string) (preflight.Options, error) {
	o := preflight.Options{Ports: preflight.DefaultPorts()}
	var f preflightFlags
	fs.StringVar(&f.role, "role", "", "this host's role: controller or worker (required)")
	fs.StringVar(&f.provider, "provider", "", "pod network provider: kuberouter, calico or custom (default kuberouter, or the --config's)")
	fs.StringVar(&f.config, "config", "", "network config file (YAML): provider, calico.mode and calico.vxlanPort are taken from it")
	fs.StringVar(&o.CalicoMode, "calico-mode", "", "Calico data plane: vxlan, ipip or bird (default vxlan, or the --config's)")
	fs.StringSliceVar(&o.Controllers, "controller", nil, "controller host(s) a worker must reach (repeat or comma-separate)")
	fs.StringSliceVar(&o.Peers, "peer", nil, "other nodes of the same role: controllers (etcd, join API) or workers (BGP, VXLAN)")
	fs.StringSliceVar(&f.notInstalled, "not-installed", nil, "components of this host not installed yet, whose ports must be free now: "+
		components(preflight.Controller)+" on a controller; "+components(preflight.Worker)+" on a worker; or none "+
		"(default: proxy-server on a controller, proxy-agent on a worker)")
	fs.IntVar(&o.Ports.Agent, "agent-port", o.Ports.Agent, "proxy-server's agent port (its --agent-port): it listens on it on a controller, agents dial it from a worker")
	fs.IntVar(&o.Ports.Admin, "admin-port", o.Ports.Admin, "admin port of this host's daemon: proxy-server's --admin-port, proxy-agent's --admin-server-port (0: off)")
	fs.IntVar(&o.Ports.Health, "health-port", o.Ports.Health, "health port of this host's daemon: proxy-server's --health-port, proxy-agent's --health-server-port (0: off)")
	fs.StringArrayVar(&f.ports, "port", nil, "another port of the table, NAME=PORT, NAME one of "+strings.Join(preflight.PortNames, ", ")+" (repeatable)")
	fs.DurationVar(&o.Timeout, "timeout", 3*time.Second, "bound of each reachability probe")
	if err := parseNoArgs(fs, args); err != nil {
		return o, err
	}
	if f.role == "" {
		return o, required("--role", "controller or worker")
	}
	o.Role = preflight.Role(f.role)
	if err := f.applyConfig(&o); err != nil {
		return o, err
	}
	if err := f.applyPorts(&o); err != nil {
		return o, err
	}
	return o, f.applyNotInstalled(fs, &o)
}

func components(r preflight.Role) string {
	var s []string
	for _, c := range preflight.RoleComponents[r] {
		s = append(s, string(c))
	}
	return strings.Join(s, ", ")
}

// applyConfig takes the provider, Calico mode and VXLAN port from
// --config, and refuses flags that disagree with it.
func (f *preflightFlags) applyConfig(o *preflight.Options) error {
	if f.config != "" {
		c, err := loadValid(f.config)
		if err != nil {
			return err
		}
		if f.provider != "" && cni.Provider(f.provider) != c.Provider {
			return usageErrorf("--provider %s disagrees with provider %s of %s: leave --provider out, or fix one of them", f.provider, c.Provider, f.config)
		}
		f.provider = string(c.Provider)
		if c.Calico != nil {
			if o.CalicoMode != "" && o.CalicoMode != c.Calico.Mode {
				return usageErrorf("--calico-mode %s disagrees with calico.mode %s of %s: leave --calico-mode out, or fix one of them", o.CalicoMode, c.Calico.Mode, f.config)
			}
			o.CalicoMode = c.Calico.Mode
			o.Ports.VXLAN = c.Calico.VXLANPort
		}
	}
	if f.provider == "" {
		f.provider = string(cni.KubeRouter)
	}
	o.Provider = cni.Provider(f.provider)
	return nil
}

func (f *preflightFlags) applyPorts(o *preflight.Options) error {
	for _, p := range f.ports {
		name, _, _ := strings.Cut(p, "=")
		switch name {
		case "konnectivity", "agent":
			return usageErrorf("--port %s: the agent port is --agent-port", p)
		case "admin", "health":
			return usageErrorf("--port %s: use --%s-port", p, name)
		}
		if err := o.Ports.Set(p); err != nil {
			return usageErrorf("--port: %w", err)
		}
	}
	for _, p := range []struct {
		flag  string
		n, lo int
	}{{"--agent-port", o.Ports.Agent, 1}, {"--admin-port", o.Ports.Admin, 0}, {"--health-port", o.Ports.Health, 0}} {
		if p.n < p.lo || p.n > 65535 {
			return usageErrorf("%s %d: must be %d to 65535", p.flag, p.n, p.lo)
		}
	}
	return nil
}

// applyNotInstalled sets the components not installed yet: --not-installed,
// "none", or the role's default (its isthmus daemon).
func (f *preflightFlags) applyNotInstalled(fs *pflag.FlagSet, o *preflight.Options) error {
	if !fs.Changed("not-installed") {
		o.NotInstalled = preflight.DefaultNotInstalled(o.Role)
		return nil
	}
	if slices.Equal(f.notInstalled, []string{"none"}) || len(f.notInstalled) == 0 {
		return nil
	}
	for _, c := range f.notInstalled {
		if c == "none" {
			return usageErrorf("--not-installed: none goes alone")
		}
		o.NotInstalled = append(o.NotInstalled, preflight.Component(c))
	}
	return nil
}
