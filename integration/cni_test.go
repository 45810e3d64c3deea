package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/cni"
	"isthmus.dev/cni/cnitest"
	"isthmus.dev/integration/harness"
)

// The isolated control plane, for real:
//
//	controller ns  ──veth 192.0.2.0/30──  node ns  ──kube-bridge 198.18.5.0/24──  pod ns
//	proxy-server                          proxy-agent                          backend on the pod IP
//	(no route to the pod network)         (dials out to 192.0.2.1:8132)
//
// The node's pod network is wired by the rendered kube-router conflist,
// run by libcni with containernetworking's plugins. All addresses are in
// namespaces this test made (TEST-NET-1 and the RFC 2544 range); none of
// them routes off the machine.
const (
	icpControllerAddr = "192.0.2.1"
	icpNodeAddr       = "192.0.2.2"
	icpPodCIDR        = "198.18.0.0/16"
	icpServiceCIDR    = "198.19.0.0/16"
	icpNodePodCIDR    = "198.18.5.0/24"
	icpBackendPort    = 8080
)

type icpCluster struct {
	ctrl, node, pod *cnitest.NetNS
	podIP, gateway  netip.Addr
	pki             *certs.Bundle
	backend         *harness.Backend // the pod's echo server
}

// TestIsolatedControlPlaneReachesPodThroughTunnel: from the controller
// namespace a direct dial to a pod IP fails (no route), and the same dial
// through proxy-server, carried by the agent on the node, reaches the pod;
// over both frontends (HTTP CONNECT and gRPC).
func TestIsolatedControlPlaneReachesPodThroughTunnel(t *testing.T) {
	cnitest.RequireNetNS(t)
	harness.LeakCheck(t)
	c := newICPCluster(t)
	target := netip.AddrPortFrom(c.podIP, icpBackendPort).String()

	// Sanity: the pod answers from its node, so the failure below is the
	// controller's isolation, not a dead backend.
	icpEcho(t, func(ctx context.Context) (net.Conn, error) { return c.node.Dial(ctx, "tcp", target) }, "from the node")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.ctrl.Dial(ctx, "tcp", target)
	if err == nil {
		conn.Close()
		t.Fatalf("the controller dialled pod %s directly: it must have no route to the pod network", target)
	}
	if !errors.Is(err, syscall.ENETUNREACH) && !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("direct dial from the controller: %v, want no route to the pod network", err)
	}

	for i, mode := range []string{harness.HTTPConnect, harness.GRPC} {
		t.Run(mode, func(t *testing.T) {
			s := c.startServer(t, mode, 8132+i)
			c.startAgent(t, s)
			waitReadyIn(t, c.ctrl, s.HealthPort)
			before := c.backend.Accepted()
			icpEcho(t, func(ctx context.Context) (net.Conn, error) { return s.Dial(ctx, target) }, "through proxy-server ("+mode+")")
			peers := c.backend.Peers()[before:]
			if len(peers) != 1 || peers[0] != c.gateway {
				t.Errorf("the pod saw connections from %v, want one from the node (%s): the agent dials from the node", peers, c.gateway)
			}
		})
	}
}

func newICPCluster(t *testing.T) *icpCluster {
	t.Helper()
	c := &icpCluster{
		ctrl: cnitest.NewNetNS(t, "ctrl"),
		node: cnitest.NewNetNS(t, "node"),
		pod:  cnitest.NewNetNS(t, "pod"),
	}
	// The controller-node link: the controller gets only this /30, no
	// default route, so the pod network is unreachable from it.
	pid := os.Getpid() % 100000
	ctrlIf, nodeIf := fmt.Sprintf("icpc%d", pid), fmt.Sprintf("icpn%d", pid)
	cnitest.Run(t, "ip", "-n", c.ctrl.Name, "link", "add", ctrlIf, "type", "veth", "peer", "name", nodeIf, "netns", c.node.Name)
	cnitest.Run(t, "ip", "-n", c.ctrl.Name, "addr", "add", icpControllerAddr+"/30", "dev", ctrlIf)
	cnitest.Run(t, "ip", "-n", c.node.Name, "addr", "add", icpNodeAddr+"/30", "dev", nodeIf)
	cnitest.Run(t, "ip", "-n", c.ctrl.Name, "link", "set", ctrlIf, "up")
	cnitest.Run(t, "ip", "-n", c.node.Name, "link", "set", nodeIf, "up")

	// The pod, wired by the rendered kube-router conflist.
	cfg, err := cni.Parse([]byte("provider: kuberouter\npodCIDR: " + icpPodCIDR + "\nserviceCIDR: " + icpServiceCIDR + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	conf, err := cfg.Conflist(cni.NodeOptions{PodCIDR: netip.MustParsePrefix(icpNodePodCIDR)})
	if err != nil {
		t.Fatal(err)
	}
	rt := cnitest.NewRuntime(t, cnitest.Plugins(t), c.node, conf.Bytes)
	rc := cnitest.RuntimeConf(c.pod, "backend-pod", nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := rt.Add(ctx, rc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rt.Del(context.Background(), rc); err != nil {
			t.Errorf("cleanup: CNI DEL: %v", err)
		}
	})
	c.podIP, c.gateway = cnitest.PodIP(t, res)
	if !netip.MustParsePrefix(icpNodePodCIDR).Contains(c.podIP) {
		t.Fatalf("pod IP %s not in the node's pod CIDR %s", c.podIP, icpNodePodCIDR)
	}
	ln, err := c.pod.Listen("tcp", netip.AddrPortFrom(c.podIP, icpBackendPort).String())
	if err != nil {
		t.Fatalf("backend on the pod IP: %v", err)
	}
	c.backend = harness.ServeBackend(t, ln, harness.Echo)

	if c.pki, err = certs.NewBundle(t.TempDir(), icpControllerAddr); err != nil {
		t.Fatal(err)
	}
	harness.RegisterBundle(t, c.pki)
	return c
}

// startServer runs proxy-server inside the controller namespace: agents on
// icpControllerAddr:agentPort, the frontend on a Unix socket (reachable
// from the test, which stands for kube-apiserver on the controller).
func (c *icpCluster) startServer(t *testing.T, mode string, agentPort int) *harness.Server {
	t.Helper()
	s := &harness.Server{
		Opts:       harness.ServerOpts{Impl: harness.Isthmus, Mode: mode, Transport: harness.UDS, ID: "ctrl-" + mode, Count: 1},
		PKI:        c.pki,
		UDS:        harness.UDSPath(t),
		AgentPort:  agentPort,
		HealthPort: 8092,
	}
	args := []string{"netns", "exec", c.ctrl.Name, bins.ProxyServer,
		"--mode=" + mode, "--uds-name=" + s.UDS, "--server-port=0",
		"--agent-port=" + strconv.Itoa(agentPort), "--agent-bind-address=" + icpControllerAddr,
		"--cluster-cert=" + c.pki.AgentPortCert, "--cluster-key=" + c.pki.AgentPortKey,
		"--health-port=" + strconv.Itoa(s.HealthPort), "--health-bind-address=127.0.0.1",
		"--admin-port=8095", "--server-id=" + s.Opts.ID, "--server-count=1",
	}
	args = append(args, s.Opts.Auth.Flags(c.pki)...)
	s.Proc = harness.Start(t, "isthmus-server-"+mode, "ip", args...)
	t.Cleanup(func() { _ = s.Stop(10 * time.Second) })
	return s
}

// startAgent runs proxy-agent inside the node namespace, dialling out to
// the controller.
func (c *icpCluster) startAgent(t *testing.T, s *harness.Server) {
	t.Helper()
	args := []string{"netns", "exec", c.node.Name, bins.ProxyAgent,
		"--proxy-server-host=" + icpControllerAddr, "--proxy-server-port=" + strconv.Itoa(s.AgentPort),
		"--ca-cert=" + c.pki.CACert, "--agent-id=node-1",
		"--health-server-host=127.0.0.1", "--health-server-port=8093", "--admin-server-port=8094",
		"--sync-interval=100ms", "--sync-interval-cap=1s",
	}
	args = append(args, harness.AgentAuth{}.Flags(c.pki)...)
	p := harness.Start(t, "isthmus-agent-"+s.Opts.Mode, "ip", args...)
	t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
}

// waitReadyIn waits for proxy-server's /readyz (an agent is connected),
// asked from inside ns.
func waitReadyIn(t *testing.T, ns *cnitest.NetNS, port int) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, network, addr string) (net.Conn, error) { return ns.Dial(ctx, network, addr) },
		DisableKeepAlives: true,
	}}
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/readyz"
	harness.WaitFor(t, 30*time.Second, "proxy-server readiness in "+ns.Name, func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// icpEcho dials, sends a line and wants it back.
func icpEcho(t *testing.T, dial func(context.Context) (net.Conn, error), how string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := dial(ctx)
	if err != nil {
		t.Fatalf("dial the pod %s: %v", how, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	msg := []byte("kubectl logs, " + how + "\n")
	if _, err := conn.Write(msg); err != nil {
		t.Fatalf("write to the pod %s: %v", how, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo from the pod %s: %q, %v", how, got, err)
	}
}
