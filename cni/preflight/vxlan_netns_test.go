package preflight_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"isthmus.dev/cni"
	"isthmus.dev/cni/cnitest"
	"isthmus.dev/cni/preflight"
)

// runIn runs checks with the socket tables of ns: the runner reads
// /proc/self/task/TID/net of a thread held inside ns for the whole run.
func runIn(t *testing.T, ns *cnitest.NetNS, checks []preflight.Check) []preflight.Result {
	t.Helper()
	var rs []preflight.Result
	err := ns.Do(func() error {
		r := preflight.Runner{ProcNet: fmt.Sprintf("/proc/self/task/%d/net", unix.Gettid()), Timeout: time.Second}
		rs = r.Run(context.Background(), checks)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestVXLANDeviceCountsAsBound: the socket Calico's VXLAN device holds is a
// kernel socket with no process; the listen check finds it, and fails once
// the device is gone.
func TestVXLANDeviceCountsAsBound(t *testing.T) {
	cnitest.RequireNetNS(t)
	ns := cnitest.NewNetNS(t, "vxlan")
	cnitest.Run(t, "ip", "-n", ns.Name, "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789", "local", "127.0.0.1")
	cnitest.Run(t, "ip", "-n", ns.Name, "link", "set", "vxlan.calico", "up")
	checks, err := preflight.Plan(preflight.Options{Role: preflight.Worker, Provider: cni.Calico, Controllers: []string{"127.0.0.1"}, Ports: preflight.DefaultPorts()})
	if err != nil {
		t.Fatal(err)
	}
	if r := byTarget(t, runIn(t, ns, checks), "Calico VXLAN", preflight.Listen, 4789); r.Status != preflight.OK {
		t.Errorf("with vxlan.calico up: %s %s", r.Status, r.Detail)
	}
	cnitest.Run(t, "ip", "-n", ns.Name, "link", "del", "vxlan.calico")
	rs := runIn(t, ns, checks)
	if r := byTarget(t, rs, "Calico VXLAN", preflight.Listen, 4789); r.Status != preflight.Fail {
		t.Errorf("without the device: %s %s", r.Status, r.Detail)
	}
	// Nothing else runs in the fresh namespace: kubelet and the controller
	// ports fail too, each with a fix.
	for _, r := range rs {
		if r.Status != preflight.Fail || r.Fix == "" {
			t.Errorf("%s %s in an empty namespace: %s %q", r.Service, r.Target(), r.Status, r.Fix)
		}
	}
}
