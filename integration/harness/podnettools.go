package harness

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// KubeRouterVersion is the kube-router the pod-network tests build from
// the Go module proxy (see kuberouter/go.mod): the only version of
// github.com/cloudnativelabs/kube-router/v2 the proxy serves.
const KubeRouterVersion = "v2.1.0"

// kubeRouterDate is the module proxy's time of KubeRouterVersion, stamped
// as its build date so that the binary is the same on every machine.
const kubeRouterDate = "2024-03-03T05:25:26Z"

// KubeRouterBinary builds kube-router KubeRouterVersion once per machine
// (BuildTool) and returns its path; the first build takes about 2 minutes
// on 2 cores. It is built as kube-router's Makefile does: CGO_ENABLED=0,
// the version and build date stamped into pkg/version.
func KubeRouterBinary(t testing.TB) string {
	t.Helper()
	const v = "github.com/cloudnativelabs/kube-router/v2/pkg/version"
	return BuildTool(t, Tool{
		Name: "kube-router-" + KubeRouterVersion, Module: "kuberouter",
		Package: "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
		LDFlags: "-X " + v + ".Version=" + KubeRouterVersion + " -X " + v + ".BuildDate=" + kubeRouterDate,
		Env:     []string{"CGO_ENABLED=0"},
		Timeout: 20 * time.Minute, FirstBuild: "about 2 minutes on 2 cores",
	})
}

// CalicoVersion is the Calico the pod-network tests build from the Go
// module proxy (see calico/go.mod), and calicoCommit and calicoDate its
// commit and time: the proxy refuses Calico's v3 tags, so the builder
// module pins the commit's pseudo-version.
const (
	CalicoVersion = "v3.31.0"
	calicoCommit  = "b1f3c43f84370504e218eb5be8a34c81348f866a"
	calicoDate    = "2025-10-21T21:38:02Z"
)

// CalicoBins are the Calico programs, built from one builder module.
type CalicoBins struct {
	// Node is calico-node: felix (-felix), the start-up routine
	// (-startup) and felix's probes (-felix-live, -felix-ready).
	Node string
	// CNI and IPAM are the CNI plugins calico and calico-ipam: one
	// program that chooses by the name it is run as, so they are the same
	// file under those two names in CNIDir, the directory to give a CNI
	// runtime as its plugin path (CNI_PATH: calico runs calico-ipam from
	// it).
	CNI, IPAM, CNIDir string
	// KubeControllers is calico-kube-controllers, and CheckStatus the
	// program of its probes (/usr/bin/check-status in its image).
	KubeControllers, CheckStatus string
}

// CalicoBinaries builds Calico CalicoVersion's calico-node, CNI plugin and
// kube-controllers once per machine (BuildTool) and returns their paths;
// the first build of the three takes about 4 minutes on 2 cores (7 on a
// busy machine), calico-node nearly all of it. They are built with
// CGO_ENABLED=0, as Calico builds its CNI plugin and kube-controllers; its
// own amd64 calico-node links libbpf through cgo, so in this one felix's
// BPF dataplane is a stub (the iptables and nftables dataplanes are whole).
// BIRD, a C program, is not among them: BGP networking is out of reach,
// VXLAN (CALICO_NETWORKING_BACKEND=vxlan) is not.
func CalicoBinaries(t testing.TB) CalicoBins {
	t.Helper()
	const b = "github.com/projectcalico/calico/pkg/buildinfo"
	ldflags := "-X " + b + ".Version=" + CalicoVersion + " -X " + b + ".GitRevision=" + calicoCommit +
		" -X " + b + ".BuildDate=" + calicoDate
	build := func(name, pkg string, timeout time.Duration, first string) string {
		return BuildTool(t, Tool{
			Name: name + "-" + CalicoVersion, Module: "calico", Package: "github.com/projectcalico/calico/" + pkg,
			LDFlags: ldflags, Env: []string{"CGO_ENABLED=0"}, Timeout: timeout, FirstBuild: first,
		})
	}
	// calico-node first: the others share nearly all its packages.
	bins := CalicoBins{
		Node: build("calico-node", "node/cmd/calico-node", 30*time.Minute, "about 3 minutes on 2 cores, 7 on a busy machine"),
	}
	cni := build("calico-cni", "cni-plugin/cmd/calico", 20*time.Minute,
		"seconds after calico-node, about 2 minutes alone")
	bins.KubeControllers = build("calico-kube-controllers", "kube-controllers/cmd/kube-controllers", 20*time.Minute,
		"seconds after calico-node, about 3 minutes alone")
	bins.CheckStatus = build("calico-check-status", "kube-controllers/cmd/check-status", 10*time.Minute,
		"seconds after calico-kube-controllers")
	// The plugin's directory, keyed as the plugin is: both names link
	// the one binary (as Calico's image installs calico-ipam).
	bins.CNIDir = cni + ".d"
	if err := os.MkdirAll(bins.CNIDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bins.CNI = filepath.Join(bins.CNIDir, "calico")
	bins.IPAM = filepath.Join(bins.CNIDir, "calico-ipam")
	for _, p := range []string{bins.CNI, bins.IPAM} {
		if err := linkOrCopy(cni, p); err != nil {
			t.Fatalf("calico CNI plugin directory: %v", err)
		}
	}
	return bins
}

// linkOrCopy makes dst the file src (a hard link, else a copy), replacing
// it atomically unless it already is: test processes may do it at once.
func linkOrCopy(src, dst string) error {
	si, err := os.Stat(src)
	if err != nil {
		return err
	}
	if di, err := os.Stat(dst); err == nil && os.SameFile(si, di) {
		return nil
	}
	tmp := fmt.Sprintf("%s.%d.tmp", dst, os.Getpid())
	_ = os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		if err := copyExecutable(src, tmp); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
