// Package preflight checks a node's ports against the required ports of an
// isolated control plane (networking-k0s.md): per role and pod network
// provider, which ports must be free now (their service is not installed
// yet), which must be listening (their service should be running), and
// what must be reachable from this host, each failure with how to fix it.
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
	Etcd      int // etcd peers, controller <-> controller (tcp)
	APIServer int // kube-apiserver, worker and CLI => controller (tcp)
	BGP       int // kube-router or Calico BIRD, worker <-> worker (tcp)
	VXLAN     int // Calico VXLAN, worker <-> worker (udp)
	Kubelet   int // kubelet, reached from the controller through the tunnel (tcp)
	K0sAPI    int // controller join API, controller <-> controller (tcp)
	// Agent is proxy-server's agent port (its --agent-port; ANP's default
	// is 8091, k0s and kubeadm's guide use 8132): worker => controller (tcp).
	Agent int
	// Admin and Health are this host's daemon's admin and health ports:
	// proxy-server's --admin-port and --health-port on a controller,
	// proxy-agent's --admin-server-port and --health-server-port on a
	// worker (local, tcp). 0: turned off, not checked.
	Admin, Health int
}

// DefaultPorts are the ports of networking-k0s.md's table, and the admin
// and health ports of kubeadm's guide (8133, 8134).
func DefaultPorts() Ports {
	return Ports{Etcd: 2380, APIServer: 6443, BGP: 179, VXLAN: 4789, Kubelet: 10250, K0sAPI: 9443, Agent: 8132, Admin: 8133, Health: 8134}
}

// PortNames are the names Set accepts, in the order of the table.
var PortNames = []string{"etcd", "apiserver", "bgp", "vxlan", "kubelet", "k0s-api"}

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
	// NotInstalled are the components of this host that are not installed
	// yet: their ports must be free now, where those of the others must be
	// listening. Each must run on Role (RoleComponents). Nil: everything
	// is installed.
	NotInstalled []Component
	// Controllers are the controller hosts a worker must reach (6443 and
	// the agent port, outbound). Required for role worker.
	Controllers []string
	// Peers are the other nodes of the same role: other controllers (etcd,
	// join API) or other workers (BGP or VXLAN). May be empty.
	Peers []string
	// Timeout bounds each reachability probe. Default 3 s.
	Timeout time.Duration
}

// Kind says what a check asks of a port.
type Kind string

// The kinds.
const (
	Free   Kind = "free"   // nothing may hold the port on this host: its service is not installed yet
	Listen Kind = "listen" // something must listen on this host: its service should be running
	Reach  Kind = "reach"  // a remote port must answer from this host
	Tunnel Kind = "tunnel" // carried by the tunnel: needs no route, not probed
)

// Describe is what the kind asks, for the table: "must be free",
// "must listen", "must answer", "via tunnel".
func (k Kind) Describe() string {
	switch k {
	case Free:
		return "must be free"
	case Listen:
		return "must listen"
	case Reach:
		return "must answer"
	case Tunnel:
		return "via tunnel"
	}
	return string(k)
}

// Check is one planned check.
type Check struct {
	Service   string    // e.g. kube-apiserver
	Component Component // what holds the port: on this host (Free, Listen) or the remote one
	Kind      Kind
	Proto     string // tcp or udp
	Host      string // Reach: the remote host; Free, Listen: empty
	Port      int
	Required  bool
	Fix       string // what to do when it fails
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
	comps, ok := RoleComponents[o.Role]
	if !ok {
		return nil, fmt.Errorf("role %q: allowed: controller, worker", o.Role)
	}
	for _, c := range o.NotInstalled {
		if !slices.Contains(comps, c) {
			return nil, fmt.Errorf("not installed %q: not a component of a %s; allowed: %s", c, o.Role, joinComponents(comps))
		}
	}
	var checks []Check
	switch o.Role {
	case Controller:
		checks = controllerPlan(o, o.Ports)
	case Worker:
		if len(o.Controllers) == 0 {
			return nil, fmt.Errorf("role worker: give the controller address(es) the worker must reach on %d and %d", o.Ports.APIServer, o.Ports.Agent)
		}
		checks = workerPlan(o, o.Ports)
	}
	for i, c := range checks {
		if c.Kind == Listen && slices.Contains(o.NotInstalled, c.Component) {
			checks[i] = mustBeFree(c)
		}
	}
	return checks, nil
}

// mustBeFree turns the listen check of a component not installed yet into
// a check that its port is free.
func mustBeFree(c Check) Check {
	c.Kind = Free
	holds := "listens on"
	if c.Proto == "udp" {
		holds = "is bound to"
	}
	c.Fix = fmt.Sprintf("%s is not installed yet and will need %s/%d: something else %s it now. Find it (ss -%slnp 'sport = :%d') and stop it, "+
		"or give %s another port and pass the same to preflight. If it is %s itself, it is installed: check that it listens instead "+
		"(isthmus preflight --not-installed none)", c.Component, c.Proto, c.Port, holds, c.Proto[:1], c.Port, c.Component, c.Component)
	return c
}
