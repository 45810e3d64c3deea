package cni_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"isthmus.dev/cni"
	"isthmus.dev/cni/cnitest"
)

// The host port mapped to pod A's podPort by portmap.
const hostPort, podPort = 18080, 8080

// The pod network of these tests: 198.18.0.0/15 (RFC 2544, benchmarking)
// rather than a private range; every address lives in a namespace the test
// made and nothing routes off the machine.
const (
	testPodCIDR     = "198.18.0.0/16"
	testServiceCIDR = "198.19.0.0/16"
	testNodePodCIDR = "198.18.5.0/24"
)

// renderKubeRouter renders cfg with cni.Render into a temp dir, as an
// operator would, and returns the conflist file's bytes.
func renderKubeRouter(t *testing.T, hairpin bool) []byte {
	t.Helper()
	yml := "provider: kuberouter\npodCIDR: " + testPodCIDR + "\nserviceCIDR: " + testServiceCIDR +
		"\nkuberouter:\n  hairpin: " + strconv.FormatBool(hairpin) + "\n"
	c, err := cni.Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	r, err := cni.Render(c, out, cni.RenderOptions{Node: cni.NodeOptions{PodCIDR: netip.MustParsePrefix(testNodePodCIDR)}})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(out, "cni", cni.KubeRouterConflist); r.Conflist != want {
		t.Fatalf("conflist written to %s, want %s", r.Conflist, want)
	}
	data, err := os.ReadFile(r.Conflist)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestKubeRouterConflistInNamespaces runs the rendered kube-router conflist
// with the real bridge, host-local, loopback and portmap plugins for two
// pods on one node: addresses from the node's slice of podCIDR, pod to pod
// traffic both ways, hairpin exactly as configured, a host port through
// portmap, CHECK (also failing when the pod was tampered with), DEL, and
// DEL twice.
func TestKubeRouterConflistInNamespaces(t *testing.T) {
	cnitest.RequireNetNS(t)
	plugins := cnitest.Plugins(t)
	for _, hairpin := range []bool{false, true} {
		t.Run("hairpin="+strconv.FormatBool(hairpin), func(t *testing.T) {
			conflist := renderKubeRouter(t, hairpin)
			runTwoPods(t, plugins, conflist, hairpin)
		})
	}
}

func runTwoPods(t *testing.T, plugins string, conflist []byte, hairpin bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	node := cnitest.NewNetNS(t, "node")
	podA, podB := cnitest.NewNetNS(t, "a"), cnitest.NewNetNS(t, "b")
	rt := cnitest.NewRuntime(t, plugins, node, conflist)

	rcA := cnitest.RuntimeConf(podA, "pod-a", map[string]any{
		"portMappings": []map[string]any{{"hostPort": hostPort, "containerPort": podPort, "protocol": "tcp"}},
	})
	rcB := cnitest.RuntimeConf(podB, "pod-b", nil)
	resA, err := rt.Add(ctx, rcA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Del(context.Background(), rcA) })
	resB, err := rt.Add(ctx, rcB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Del(context.Background(), rcB) })

	ipA, gw := cnitest.PodIP(t, resA)
	ipB, _ := cnitest.PodIP(t, resB)
	nodeNet := netip.MustParsePrefix(testNodePodCIDR)
	cluster := netip.MustParsePrefix(testPodCIDR)
	for _, ip := range []netip.Addr{ipA, ipB} {
		if !nodeNet.Contains(ip) || !cluster.Contains(ip) {
			t.Errorf("pod address %s is not in the node's %s of podCIDR %s", ip, nodeNet, cluster)
		}
		if ip == gw {
			t.Errorf("pod address %s is the gateway", ip)
		}
	}
	if ipA == ipB {
		t.Fatalf("both pods got %s", ipA)
	}
	wantAddr(t, podA, ipA)
	wantAddr(t, podB, ipB)

	// Pod to pod, both ways, over the bridge.
	exchange(t, ctx, podB, podA, ipB)
	exchange(t, ctx, podA, podB, ipA)

	for _, res := range []string{cnitest.HostVeth(t, resA, cni.KubeBridge), cnitest.HostVeth(t, resB, cni.KubeBridge)} {
		if got := hairpinOf(t, node, res); got != hairpin {
			t.Errorf("hairpin on bridge port %s = %v, want %v (kuberouter.hairpin)", res, got, hairpin)
		}
	}

	// portmap: the node's host port reaches pod A's port.
	lnA := serveEcho(t, podA, netip.AddrPortFrom(ipA, podPort))
	exchangeTo(t, ctx, node, netip.AddrPortFrom(gw, hostPort))
	lnA.Close()

	checkThenDelete(t, ctx, rt, twoPods{rcA, rcB, resA, ipA, ipB, gw})
}

type twoPods struct {
	rcA, rcB       *libcni.RuntimeConf
	resA           *current.Result
	ipA, ipB, gwIP netip.Addr
}

// checkThenDelete: CHECK passes for both pods, and fails for a pod whose
// address was removed; DEL twice succeeds; the node's veth, the pod's
// eth0, the host port and host-local's leases are gone.
func checkThenDelete(t *testing.T, ctx context.Context, rt *cnitest.Runtime, p twoPods) {
	t.Helper()
	node := rt.Node
	for _, rc := range []*libcni.RuntimeConf{p.rcA, p.rcB} {
		if err := rt.Check(ctx, rc); err != nil {
			t.Errorf("CHECK %s: %v", rc.ContainerID, err)
		}
	}
	cnitest.Run(t, "ip", "-n", filepath.Base(p.rcB.NetNS), "addr", "flush", "dev", "eth0")
	if err := rt.Check(ctx, p.rcB); err == nil {
		t.Errorf("CHECK pod-b passed after its address was removed")
	}

	vethA := cnitest.HostVeth(t, p.resA, cni.KubeBridge)
	for round := 1; round <= 2; round++ { // DEL twice is harmless
		for _, rc := range []*libcni.RuntimeConf{p.rcA, p.rcB} {
			if err := rt.Del(ctx, rc); err != nil {
				t.Fatalf("DEL %s (round %d): %v", rc.ContainerID, round, err)
			}
		}
	}
	if err := node.Do(func() error { _, err := netlink.LinkByName(vethA); return err }); err == nil {
		t.Errorf("veth %s still on the node after DEL", vethA)
	}
	if err := cnitest.InPath(p.rcA.NetNS, func() error { _, err := netlink.LinkByName("eth0"); return err }); err == nil {
		t.Errorf("eth0 still in pod-a after DEL")
	}
	if c, err := node.Dial(ctx, "tcp", netip.AddrPortFrom(p.gwIP, hostPort).String()); err == nil {
		c.Close()
		t.Errorf("host port %d still answers after DEL", hostPort)
	}
	for _, ip := range []netip.Addr{p.ipA, p.ipB} {
		if _, err := os.Stat(filepath.Join(rt.IPAMDataDir, cni.KubeRouterNetwork, ip.String())); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("host-local still holds %s after DEL (stat: %v)", ip, err)
		}
	}
}

// wantAddr checks that pod's eth0 holds ip.
func wantAddr(t *testing.T, pod *cnitest.NetNS, ip netip.Addr) {
	t.Helper()
	var found bool
	err := pod.Do(func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		for _, a := range addrs {
			if got, _ := netip.AddrFromSlice(a.IP); got.Unmap() == ip {
				found = true
			}
		}
		return err
	})
	if err != nil || !found {
		t.Errorf("eth0 of %s does not hold %s (err %v)", pod.Name, ip, err)
	}
}

func hairpinOf(t *testing.T, node *cnitest.NetNS, veth string) bool {
	t.Helper()
	var on bool
	err := node.Do(func() error {
		link, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		pi, err := netlink.LinkGetProtinfo(link)
		on = pi.Hairpin
		return err
	})
	if err != nil {
		t.Fatalf("bridge port %s: %v", veth, err)
	}
	return on
}

// serveEcho listens on addr inside ns and echoes each connection.
func serveEcho(t *testing.T, ns *cnitest.NetNS, addr netip.AddrPort) net.Listener {
	t.Helper()
	ln, err := ns.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln
}

// exchange serves an echo on server's ip and talks to it from client.
func exchange(t *testing.T, ctx context.Context, server, client *cnitest.NetNS, ip netip.Addr) {
	t.Helper()
	ln := serveEcho(t, server, netip.AddrPortFrom(ip, 7000))
	defer ln.Close()
	exchangeTo(t, ctx, client, netip.AddrPortFrom(ip, 7000))
}

// exchangeTo dials addr from ns and checks an echo round trip.
func exchangeTo(t *testing.T, ctx context.Context, ns *cnitest.NetNS, addr netip.AddrPort) {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := ns.Dial(dctx, "tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns.Name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello from " + ns.Name)
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write to %s: %v", addr, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo from %s: got %q, %v", addr, got, err)
	}
}
