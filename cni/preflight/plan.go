// Package preflight checks a node's ports against the required ports of an
// isolated control plane (networking-k0s.md): per role and pod network
// provider, what must listen on this host and what must be reachable from
// it, each failure with how to fix it.
package preflight

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"isthmus.dev/cni"
)

// Role is the node's role.
type Role string

// The roles.
const (
	Controller Role = "controller"
	Worker     Role = "worker"
)

// Ports are the port numbers checked; DefaultPorts has the standard ones.
type Ports struct {
	Etcd         int // etcd peers, controller <-> controller (tcp)
	APIServer    int // kube-apiserver, worker and CLI => controller (tcp)
	BGP          int // kube-router or Calico BIRD, worker <-> worker (tcp)
	VXLAN        int // Calico VXLAN, worker <-> worker (udp)
	Kubelet      int // kubelet, reached from the controller through the tunnel (tcp)
	K0sAPI       int // controller join API, controller <-> controller (tcp)
	Konnectivity int // proxy-server's agent port, worker => controller (tcp)
}

// DefaultPorts are the ports of networking-k0s.md's table.
func DefaultPorts() Ports {
	return Ports{Etcd: 2380, APIServer: 6443, BGP: 179, VXLAN: 4789, Kubelet: 10250, K0sAPI: 9443, Konnectivity: 8132}
}

// PortNames are the names Set accepts, in the order of the table.
var PortNames = []string{"etcd", "apiserver", "bgp", "vxlan", "kubelet", "k0s-api", "konnectivity"}

func (p *Ports) field(name string) *int {
	switch name {
	case "etcd":
		return &p.Etcd
	case "apiserver":
		return &p.APIServer
	case "bgp":
		return &p.BGP
	case "vxlan":
		return &p.VXLAN
	case "kubelet":
		return &p.Kubelet
	case "k0s-api":
		return &p.K0sAPI
	case "konnectivity":
		return &p.Konnectivity
	}
	return nil
}

// Set parses NAME=PORT (e.g. apiserver=16443) onto p.
func (p *Ports) Set(kv string) error {
	name, val, ok := strings.Cut(kv, "=")
	f := p.field(name)
	if !ok || f == nil {
		return fmt.Errorf("port %q: want NAME=PORT with NAME one of %s", kv, strings.Join(PortNames, ", "))
	}
	n, err := strconv.Atoi(val)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: PORT must be 1 to 65535", kv)
	}
	*f = n
	return nil
}

// Options say which node is checked.
type Options struct {
	Role     Role
	Provider cni.Provider
	// CalicoMode is vxlan (default), ipip or bird: vxlan needs udp between
	// workers, ipip and bird need BGP (tcp) between workers.
	CalicoMode string
	Ports      Ports
	// Controllers are the controller hosts a worker must reach (6443 and
	// the agent port, outbound). Required for role worker.
	Controllers []string
	// Peers are the other nodes of the same role: other controllers (etcd,
	// join API) or other workers (BGP or VXLAN). May be empty.
	Peers []string
	// Timeout bounds each reachability probe. Default 3 s.
	Timeout time.Duration
}

// Kind says whether a check is about this host or a remote one.
type Kind string

// The kinds.
const (
	Listen Kind = "listen" // something must listen on this host
	Reach  Kind = "reach"  // a remote port must answer from this host
	Tunnel Kind = "tunnel" // carried by the tunnel: needs no route, not probed
)

// Check is one planned check.
type Check struct {
	Service  string // e.g. kube-apiserver
	Kind     Kind
	Proto    string // tcp or udp
	Host     string // Reach: the remote host; Listen: empty
	Port     int
	Required bool
	Fix      string // what to do when it fails
}

// Target is host:port/proto, or *:port/proto for a local check.
func (c Check) Target() string {
	host := c.Host
	if host == "" {
		host = "*"
	}
	return net.JoinHostPort(host, strconv.Itoa(c.Port)) + "/" + c.Proto
}

// Plan lists the checks for o, from the required ports table.
func Plan(o Options) ([]Check, error) {
	if !slices.Contains(cni.Providers, o.Provider) {
		return nil, fmt.Errorf("provider %q: allowed: kuberouter, calico, custom", o.Provider)
	}
	if o.CalicoMode == "" {
		o.CalicoMode = "vxlan"
	}
	if !slices.Contains([]string{"vxlan", "ipip", "bird"}, o.CalicoMode) {
		return nil, fmt.Errorf("calico mode %q: allowed: vxlan, ipip, bird", o.CalicoMode)
	}
	p := o.Ports
	switch o.Role {
	case Controller:
		return controllerPlan(o, p), nil
	case Worker:
		if len(o.Controllers) == 0 {
			return nil, fmt.Errorf("role worker: give the controller address(es) the worker must reach on %d and %d", p.APIServer, p.Konnectivity)
		}
		return workerPlan(o, p), nil
	}
	return nil, fmt.Errorf("role %q: allowed: controller, worker", o.Role)
}

func controllerPlan(o Options, p Ports) []Check {
	multi := len(o.Peers) > 0
	checks := []Check{
		{Service: "kube-apiserver", Kind: Listen, Proto: "tcp", Port: p.APIServer, Required: true,
			Fix: fmt.Sprintf("start kube-apiserver with --secure-port=%d, and let workers and CLIs reach it (inbound tcp/%d)", p.APIServer, p.APIServer)},
		{Service: "proxy-server (agents)", Kind: Listen, Proto: "tcp", Port: p.Konnectivity, Required: true,
			Fix: fmt.Sprintf("start proxy-server with --agent-port=%d, and open inbound tcp/%d from the workers: agents dial out to it", p.Konnectivity, p.Konnectivity)},
		{Service: "etcd peers", Kind: Listen, Proto: "tcp", Port: p.Etcd, Required: multi,
			Fix: fmt.Sprintf("start etcd with its peer URL on port %d; needed between controllers (optional with one controller)", p.Etcd)},
		{Service: "controller join API", Kind: Listen, Proto: "tcp", Port: p.K0sAPI, Required: multi,
			Fix: fmt.Sprintf("start the controller join API on port %d; needed between controllers (optional with one controller)", p.K0sAPI)},
	}
	for _, peer := range o.Peers {
		checks = append(checks,
			Check{Service: "etcd peers", Kind: Reach, Proto: "tcp", Host: peer, Port: p.Etcd, Required: true,
				Fix: fmt.Sprintf("open tcp/%d between the controllers (both ways) and check etcd runs on %s", p.Etcd, peer)},
			Check{Service: "controller join API", Kind: Reach, Proto: "tcp", Host: peer, Port: p.K0sAPI, Required: true,
				Fix: fmt.Sprintf("open tcp/%d between the controllers (both ways) and check the join API runs on %s", p.K0sAPI, peer)},
		)
	}
	return append(checks, Check{Service: "kubelet (workers)", Kind: Tunnel, Proto: "tcp", Port: p.Kubelet,
		Fix: "none: kube-apiserver reaches kubelets through proxy-server and the agents; the controller needs no route to the workers"})
}

func workerPlan(o Options, p Ports) []Check {
	checks := []Check{{Service: "kubelet", Kind: Listen, Proto: "tcp", Port: p.Kubelet, Required: true,
		Fix: fmt.Sprintf("start kubelet (port %d); proxy-agent dials it on behalf of kube-apiserver", p.Kubelet)}}
	for _, c := range o.Controllers {
		checks = append(checks,
			Check{Service: "kube-apiserver", Kind: Reach, Proto: "tcp", Host: c, Port: p.APIServer, Required: true,
				Fix: fmt.Sprintf("allow outbound tcp/%d from this worker to %s and check kube-apiserver listens there", p.APIServer, c)},
			Check{Service: "proxy-server (agents)", Kind: Reach, Proto: "tcp", Host: c, Port: p.Konnectivity, Required: true,
				Fix: fmt.Sprintf("allow outbound tcp/%d from this worker to %s and check proxy-server listens there (--agent-port)", p.Konnectivity, c)},
		)
	}
	switch {
	case o.Provider == cni.KubeRouter:
		checks = append(checks, bgpChecks("kube-router BGP", "kube-router", o.Peers, p)...)
	case o.Provider == cni.Calico && o.CalicoMode == "vxlan":
		checks = append(checks, Check{Service: "Calico VXLAN", Kind: Listen, Proto: "udp", Port: p.VXLAN, Required: true,
			Fix: fmt.Sprintf("start calico-node: Felix opens the vxlan.calico device on udp/%d (calico.vxlanPort)", p.VXLAN)})
		for _, peer := range o.Peers {
			checks = append(checks, Check{Service: "Calico VXLAN", Kind: Reach, Proto: "udp", Host: peer, Port: p.VXLAN, Required: true,
				Fix: fmt.Sprintf("open udp/%d between the workers (both ways) and check calico-node runs on %s", p.VXLAN, peer)})
		}
	case o.Provider == cni.Calico:
		checks = append(checks, bgpChecks("Calico BGP (BIRD)", "calico-node", o.Peers, p)...)
	}
	return checks
}

func bgpChecks(service, daemon string, peers []string, p Ports) []Check {
	checks := []Check{{Service: service, Kind: Listen, Proto: "tcp", Port: p.BGP, Required: true,
		Fix: fmt.Sprintf("start %s: it holds the BGP sessions with the other workers on tcp/%d", daemon, p.BGP)}}
	for _, peer := range peers {
		checks = append(checks, Check{Service: service, Kind: Reach, Proto: "tcp", Host: peer, Port: p.BGP, Required: true,
			Fix: fmt.Sprintf("open tcp/%d between the workers (both ways) and check %s runs on %s", p.BGP, daemon, peer)})
	}
	return checks
}
