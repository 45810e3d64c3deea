package preflight

import (
	"fmt"
	"strings"

	"isthmus.dev/cni"
)

// Component is a service that holds ports on a node, by the name an
// operator knows it.
type Component string

// The components.
const (
	KubeAPIServer Component = "kube-apiserver"
	ProxyServer   Component = "proxy-server"
	Etcd          Component = "etcd"
	JoinAPI       Component = "join-api" // the controller join API (k0s-api)
	Kubelet       Component = "kubelet"
	ProxyAgent    Component = "proxy-agent"
	PodNetwork    Component = "pod-network" // kube-router or calico-node
)

// RoleComponents are the components that run on each role's nodes.
var RoleComponents = map[Role][]Component{
	Controller: {KubeAPIServer, ProxyServer, Etcd, JoinAPI},
	Worker:     {Kubelet, ProxyAgent, PodNetwork},
}

// DefaultNotInstalled is what a preflight before installing isthmus
// assumes is not installed yet: the isthmus daemon of the role.
func DefaultNotInstalled(r Role) []Component {
	switch r {
	case Controller:
		return []Component{ProxyServer}
	case Worker:
		return []Component{ProxyAgent}
	}
	return nil
}

func joinComponents(cs []Component) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = string(c)
	}
	return strings.Join(s, ", ")
}

func controllerPlan(o Options, p Ports) []Check {
	multi := len(o.Peers) > 0
	checks := []Check{
		{Service: "kube-apiserver", Component: KubeAPIServer, Kind: Listen, Proto: "tcp", Port: p.APIServer, Required: true,
			Fix: fmt.Sprintf("kube-apiserver must be running: start it with --secure-port=%d, and let workers and CLIs reach it (inbound tcp/%d)", p.APIServer, p.APIServer)},
		{Service: "proxy-server (agents)", Component: ProxyServer, Kind: Listen, Proto: "tcp", Port: p.Agent, Required: true,
			Fix: fmt.Sprintf("proxy-server must be running: start it with --agent-port=%d, and open inbound tcp/%d from the workers: agents dial out to it", p.Agent, p.Agent)},
	}
	checks = append(checks, daemonChecks(ProxyServer, "--admin-port", "--health-port", p)...)
	checks = append(checks,
		Check{Service: "etcd peers", Component: Etcd, Kind: Listen, Proto: "tcp", Port: p.Etcd, Required: multi,
			Fix: fmt.Sprintf("etcd must be running: start it with its peer URL on port %d; needed between controllers (optional with one controller)", p.Etcd)},
		Check{Service: "controller join API", Component: JoinAPI, Kind: Listen, Proto: "tcp", Port: p.K0sAPI, Required: multi,
			Fix: fmt.Sprintf("the controller join API must be running on port %d; needed between controllers (optional with one controller)", p.K0sAPI)},
	)
	for _, peer := range o.Peers {
		checks = append(checks,
			Check{Service: "etcd peers", Component: Etcd, Kind: Reach, Proto: "tcp", Host: peer, Port: p.Etcd, Required: true,
				Fix: fmt.Sprintf("open tcp/%d between the controllers (both ways) and check etcd runs on %s", p.Etcd, peer)},
			Check{Service: "controller join API", Component: JoinAPI, Kind: Reach, Proto: "tcp", Host: peer, Port: p.K0sAPI, Required: true,
				Fix: fmt.Sprintf("open tcp/%d between the controllers (both ways) and check the join API runs on %s", p.K0sAPI, peer)},
		)
	}
	return append(checks, Check{Service: "kubelet (workers)", Component: Kubelet, Kind: Tunnel, Proto: "tcp", Port: p.Kubelet,
		Fix: "none: kube-apiserver reaches kubelets through proxy-server and the agents; the controller needs no route to the workers"})
}

// daemonChecks are the admin and health ports of an isthmus daemon on
// this host (a port 0 is turned off: no check).
func daemonChecks(c Component, adminFlag, healthFlag string, p Ports) []Check {
	var checks []Check
	for _, port := range []struct {
		what, flag string
		n          int
	}{{"admin", adminFlag, p.Admin}, {"health", healthFlag, p.Health}} {
		if port.n == 0 {
			continue
		}
		checks = append(checks, Check{Service: fmt.Sprintf("%s (%s)", c, port.what), Component: c, Kind: Listen, Proto: "tcp", Port: port.n, Required: true,
			Fix: fmt.Sprintf("%s must be running with %s=%d (or pass the port it uses to preflight)", c, port.flag, port.n)})
	}
	return checks
}

func workerPlan(o Options, p Ports) []Check {
	checks := []Check{{Service: "kubelet", Component: Kubelet, Kind: Listen, Proto: "tcp", Port: p.Kubelet, Required: true,
		Fix: fmt.Sprintf("kubelet must be running (port %d); proxy-agent dials it on behalf of kube-apiserver", p.Kubelet)}}
	checks = append(checks, daemonChecks(ProxyAgent, "--admin-server-port", "--health-server-port", p)...)
	for _, c := range o.Controllers {
		checks = append(checks,
			Check{Service: "kube-apiserver", Component: KubeAPIServer, Kind: Reach, Proto: "tcp", Host: c, Port: p.APIServer, Required: true,
				Fix: fmt.Sprintf("allow outbound tcp/%d from this worker to %s and check kube-apiserver listens there", p.APIServer, c)},
			Check{Service: "proxy-server (agents)", Component: ProxyServer, Kind: Reach, Proto: "tcp", Host: c, Port: p.Agent, Required: true,
				Fix: fmt.Sprintf("allow outbound tcp/%d from this worker to %s and check proxy-server listens there (its --agent-port; install it on the controllers before the agents)", p.Agent, c)},
		)
	}
	switch {
	case o.Provider == cni.KubeRouter:
		checks = append(checks, bgpChecks("kube-router BGP", "kube-router", o.Peers, p)...)
	case o.Provider == cni.Calico && o.CalicoMode == "vxlan":
		checks = append(checks, Check{Service: "Calico VXLAN", Component: PodNetwork, Kind: Listen, Proto: "udp", Port: p.VXLAN, Required: true,
			Fix: fmt.Sprintf("calico-node must be running: Felix opens the vxlan.calico device on udp/%d (calico.vxlanPort)", p.VXLAN)})
		for _, peer := range o.Peers {
			checks = append(checks, Check{Service: "Calico VXLAN", Component: PodNetwork, Kind: Reach, Proto: "udp", Host: peer, Port: p.VXLAN, Required: true,
				Fix: fmt.Sprintf("open udp/%d between the workers (both ways) and check calico-node runs on %s", p.VXLAN, peer)})
		}
	case o.Provider == cni.Calico:
		checks = append(checks, bgpChecks("Calico BGP (BIRD)", "calico-node", o.Peers, p)...)
	}
	return checks
}

func bgpChecks(service, daemon string, peers []string, p Ports) []Check {
	checks := []Check{{Service: service, Component: PodNetwork, Kind: Listen, Proto: "tcp", Port: p.BGP, Required: true,
		Fix: fmt.Sprintf("%s must be running: it holds the BGP sessions with the other workers on tcp/%d", daemon, p.BGP)}}
	for _, peer := range peers {
		checks = append(checks, Check{Service: service, Component: PodNetwork, Kind: Reach, Proto: "tcp", Host: peer, Port: p.BGP, Required: true,
			Fix: fmt.Sprintf("open tcp/%d between the workers (both ways) and check %s runs on %s", p.BGP, daemon, peer)})
	}
	return checks
}
