package podnet

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"isthmus.dev/cni"
	"isthmus.dev/cni/cnitest"
	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

// TestKubeRouterTwoNodes: kube-router, run on two nodes as the rendered
// DaemonSet runs it (its init container installs the rendered conflist
// template, kube-router completes it with the node's podCIDR), peers the
// nodes over BGP; the pods, wired by the conflist it completed, reach each
// other across the nodes by the route each node learned; the control
// plane reaches them through the tunnel only.
func TestKubeRouterTwoNodes(t *testing.T) {
	t.Parallel()
	cidrs := []string{"198.18.1.0/24", "198.18.2.0/24"}
	requirePrograms(t, "nsenter", "unshare", "iptables", "ipset")
	c := newCluster(t, cidrs...)
	bin := harness.KubeRouterBinary(t)
	programs := map[string]string{"/usr/local/bin/kube-router": bin, "kube-router": bin}

	r := render(t, "provider: kuberouter\npodCIDR: "+podCIDR+"\nserviceCIDR: "+serviceCIDR+"\n")
	r.apply(t, c.cp)
	ds := r.daemonSet(t, "kube-router")
	sa := ds.Spec.Template.Spec.ServiceAccountName

	procs := make([]*harness.Proc, len(c.nodes))
	for i, n := range c.nodes {
		// The projected service-account volume of the DaemonSet's pod.
		n.serviceAccount(t, c.cp.Token(t, cni.SystemNamespace, sa, controlplane.TokenOpts{}), c.caPEM(t), cni.SystemNamespace)
		// install-cniconf, the init container that needs no image of its
		// own: its shell command, with its volumes, on the node.
		initc := r.containerOf(t, ds, "install-cniconf", n)
		r.mountVolumes(t, ds, initc, n)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := n.run(ctx, initc.env, initc.spec.Command...)
		cancel()
		if err != nil {
			t.Fatalf("the rendered install-cniconf init container: %v", err)
		}
		router := r.containerOf(t, ds, "kube-router", n)
		r.mountVolumes(t, ds, router, n)
		if len(router.spec.Command) != 0 {
			t.Fatalf("the rendered kube-router container sets a command %v: the test runs the image's entrypoint (kube-router) with the rendered args", router.spec.Command)
		}
		// kube-router writes its routing table's name to /etc/iproute2: the
		// node's overlay takes it.
		p := n.start(t, "kube-router", router.env, append([]string{bin}, router.spec.Args...)...)
		p.DumpOnFailure = true
		t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
		procs[i] = p
	}
	for i, n := range c.nodes {
		router := r.containerOf(t, ds, "kube-router", n)
		waitProbe(t, "kube-router's rendered liveness probe", 2*time.Minute, router.spec.LivenessProbe, router, n, programs, procs[i])
	}

	// kube-router completes the conflist with the node's podCIDR.
	conflists := make([][]byte, len(c.nodes))
	for i, n := range c.nodes {
		path := "/etc/cni/net.d/" + cni.KubeRouterConflist
		harness.WaitFor(t, time.Minute, "kube-router to write "+cidrs[i]+" into "+path+" on "+n.name, func() bool {
			b, err := n.readFile(path)
			if err != nil {
				return false
			}
			conflists[i] = b
			return strings.Contains(string(b), cidrs[i])
		})
		var list struct {
			Plugins []json.RawMessage `json:"plugins"`
		}
		if err := json.Unmarshal(conflists[i], &list); err != nil || len(list.Plugins) == 0 {
			t.Fatalf("the conflist kube-router completed on %s does not decode: %v\n%s", n.name, err, conflists[i])
		}
	}

	// BGP: each node learns the other's pod range, by the other's LAN address.
	start := time.Now()
	for i, n := range c.nodes {
		other := c.nodes[1-i]
		harness.WaitFor(t, 2*time.Minute, n.name+" to learn "+cidrs[1-i]+" over BGP", func() bool {
			return strings.Contains(n.route(t, cidrs[1-i]), "via "+other.ip.String())
		})
	}
	t.Logf("both nodes learned the other's pod range over BGP in %v", time.Since(start).Round(100*time.Millisecond))

	pods := make([]*pod, len(c.nodes))
	for i, n := range c.nodes {
		pods[i] = addBridgePod(t, n, conflists[i], netip.MustParsePrefix(cidrs[i]))
	}
	checkPodToPod(t, pods, "by the BGP route")
	c.checkTunnel(t, pods)
	c.checkNoRefusals(t, sa)
}

// addBridgePod makes a pod namespace on n and wires it with conflist (the
// one kube-router completed) through libcni and the standard plugins.
func addBridgePod(t *testing.T, n *node, conflist []byte, want netip.Prefix) *pod {
	t.Helper()
	p := &pod{node: n, ns: cnitest.NewNetNS(t, n.name+"-pod")}
	rt := cnitest.NewRuntime(t, cnitest.Plugins(t), n.ns, conflist)
	rc := cnitest.RuntimeConf(p.ns, "pod-on-"+n.name, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := rt.Add(ctx, rc)
	if err != nil {
		t.Fatalf("CNI ADD on %s: %v", n.name, err)
	}
	t.Cleanup(func() {
		if err := rt.Del(context.Background(), rc); err != nil {
			t.Errorf("cleanup: CNI DEL on %s: %v", n.name, err)
		}
	})
	p.ip, _ = cnitest.PodIP(t, res)
	if !want.Contains(p.ip) {
		t.Fatalf("the pod on %s got %s, outside the node's podCIDR %s", n.name, p.ip, want)
	}
	p.echo = startEcho(t, p.ns, netip.AddrPortFrom(p.ip, backendPort))
	return p
}
