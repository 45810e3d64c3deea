package cnitest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Runtime plays a container runtime on a node: it runs a conflist with
// libcni for pods (namespaces), the way containerd or CRI-O do, from inside
// the node namespace.
type Runtime struct {
	Node *NetNS
	// IPAMDataDir is host-local's dataDir: DIR/NETWORK/IP per lease.
	IPAMDataDir string
	List        *libcni.NetworkConfigList
	CNI         *libcni.CNIConfig
	lo          *libcni.NetworkConfigList
}

// NewRuntime parses conflist with libcni and prepares to run it with the
// plugins in pluginDir. host-local's state (dataDir) and libcni's result
// cache go to test temp dirs instead of /var/lib/cni; nothing else of the
// conflist is changed.
func NewRuntime(t testing.TB, pluginDir string, node *NetNS, conflist []byte) *Runtime {
	t.Helper()
	dataDir := t.TempDir()
	patched, err := withHostLocalDataDir(conflist, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(patched)
	if err != nil {
		t.Fatalf("libcni refuses the conflist: %v\n%s", err, conflist)
	}
	lo, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	return &Runtime{
		Node:        node,
		IPAMDataDir: dataDir,
		List:        list,
		CNI:         libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), nil),
		lo:          lo,
	}
}

// withHostLocalDataDir sets ipam.dataDir of every host-local plugin.
func withHostLocalDataDir(conflist []byte, dir string) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(conflist, &m); err != nil {
		return nil, fmt.Errorf("conflist: %w", err)
	}
	plugins, _ := m["plugins"].([]any)
	for _, p := range plugins {
		pm, _ := p.(map[string]any)
		ipam, _ := pm["ipam"].(map[string]any)
		if ipam != nil && ipam["type"] == "host-local" {
			ipam["dataDir"] = dir
		}
	}
	return json.Marshal(m)
}

// RuntimeConf is what a runtime passes for pod on interface eth0.
func RuntimeConf(pod *NetNS, id string, caps map[string]any) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path, IfName: "eth0", CapabilityArgs: caps}
}

// Add runs ADD of the loopback plugin (for lo) and of the conflist for
// pod, and returns the conflist's result.
func (r *Runtime) Add(ctx context.Context, rc *libcni.RuntimeConf) (*current.Result, error) {
	var res *current.Result
	err := r.Node.Do(func() error {
		loRC := *rc
		loRC.IfName = "lo"
		loRC.CapabilityArgs = nil
		if _, err := r.CNI.AddNetworkList(ctx, r.lo, &loRC); err != nil {
			return fmt.Errorf("ADD loopback: %w", err)
		}
		raw, err := r.CNI.AddNetworkList(ctx, r.List, rc)
		if err != nil {
			return fmt.Errorf("ADD %s: %w", r.List.Name, err)
		}
		res, err = current.NewResultFromResult(raw)
		return err
	})
	return res, err
}

// Check runs CHECK of the conflist for the pod.
func (r *Runtime) Check(ctx context.Context, rc *libcni.RuntimeConf) error {
	return r.Node.Do(func() error { return r.CNI.CheckNetworkList(ctx, r.List, rc) })
}

// Del runs DEL of the conflist and of loopback for the pod.
func (r *Runtime) Del(ctx context.Context, rc *libcni.RuntimeConf) error {
	return r.Node.Do(func() error {
		if err := r.CNI.DelNetworkList(ctx, r.List, rc); err != nil {
			return fmt.Errorf("DEL %s: %w", r.List.Name, err)
		}
		loRC := *rc
		loRC.IfName = "lo"
		loRC.CapabilityArgs = nil
		if err := r.CNI.DelNetworkList(ctx, r.lo, &loRC); err != nil {
			return fmt.Errorf("DEL loopback: %w", err)
		}
		return nil
	})
}

// PodIP is the first address of the result's eth0 in the pod, with the
// gateway.
func PodIP(t testing.TB, res *current.Result) (ip, gw netip.Addr) {
	t.Helper()
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface >= len(res.Interfaces) || res.Interfaces[*ipc.Interface].Sandbox == "" {
			continue
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		g, _ := netip.AddrFromSlice(ipc.Gateway)
		return a.Unmap(), g.Unmap()
	}
	t.Fatalf("no pod address in the result: %+v", res)
	return netip.Addr{}, netip.Addr{}
}

// HostVeth is the name of the node-side veth of the result.
func HostVeth(t testing.TB, res *current.Result, bridge string) string {
	t.Helper()
	for _, i := range res.Interfaces {
		if i.Sandbox == "" && i.Name != bridge {
			return i.Name
		}
	}
	t.Fatalf("no host veth in the result: %+v", res)
	return ""
}
