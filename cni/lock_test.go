package cni_test

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"isthmus.dev/cni"
)

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// helperEnv makes the test binary a one-shot "isthmus cni render" in
// TestMain: the first render happens in another process, which exits
// before the second one runs.
const helperEnv = "ISTHMUS_CNI_TEST_RENDER"

func TestMain(m *testing.M) {
	if args := os.Getenv(helperEnv); args != "" {
		config, out, _ := strings.Cut(args, "|")
		c, err := cni.Load(config)
		if err == nil {
			_, err = cni.Render(c, out, cni.RenderOptions{})
		}
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestProviderChangeRefusedAfterRestart: a render in one process records
// kuberouter; in this process (a restart, as far as the lock knows),
// rendering calico is refused with an error that says a full redeploy is
// needed, and nothing of the kube-router render is touched. The same
// provider renders again fine.
func TestProviderChangeRefusedAfterRestart(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	cfg := filepath.Join(dir, "network.yaml")
	if err := os.WriteFile(cfg, []byte("provider: kuberouter\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+cfg+"|"+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("first render in a child process: %v\n%s", err, b)
	}
	before, err := os.ReadFile(filepath.Join(out, "cni", cni.KubeRouterConflist))
	if err != nil {
		t.Fatal(err)
	}

	_, err = cni.Render(mustParse(t, "provider: calico"), out, cni.RenderOptions{})
	var pc *cni.ProviderChangeError
	if !errors.As(err, &pc) || !errors.Is(err, cni.ErrProviderChange) {
		t.Fatalf("calico after kuberouter: %v, want a provider change refusal", err)
	}
	if pc.From != cni.KubeRouter || pc.To != cni.Calico || !strings.Contains(err.Error(), "full cluster redeployment") {
		t.Errorf("refusal: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "manifests", "calico")); !os.IsNotExist(err) {
		t.Errorf("calico manifests written despite the refusal: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(out, "cni", cni.KubeRouterConflist))
	if string(after) != string(before) {
		t.Errorf("the kube-router conflist changed")
	}
	// A child process sees the same refusal.
	if err := os.WriteFile(cfg, []byte("provider: calico\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+cfg+"|"+out)
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "full cluster redeployment") {
		t.Errorf("calico in a new process: %v\n%s", err, b)
	}
	if _, err := cni.Render(mustParse(t, "kuberouter: {hairpin: true}"), out, cni.RenderOptions{Force: true}); err != nil {
		t.Errorf("same provider again: %v", err)
	}
}

func TestProviderLockDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := cni.ProviderLock{Path: path}
	if err := l.Check(cni.Calico); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("damaged lock: %v", err)
	}
	if err := l.Record(cni.Calico); err == nil {
		t.Errorf("recorded over a damaged lock")
	}
}

func TestInstall(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "net.d")
	state := filepath.Join(dir, "state", "cni.json")
	c := mustParse(t, "podCIDR: 198.18.0.0/16\nserviceCIDR: 198.19.0.0/16")
	node := cni.NodeOptions{PodCIDR: mustPrefix(t, "198.18.7.0/24")}
	path, err := cni.Install(c, conf, cni.InstallOptions{Node: node, StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	want, err := c.Conflist(node)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != string(want.Bytes) || path != filepath.Join(conf, cni.KubeRouterConflist) {
		t.Fatalf("installed %s: %v", path, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(conf)
	if len(entries) != 1 {
		t.Errorf("conf dir holds %d entries, want only the conflist", len(entries))
	}
	if rec, err := (cni.ProviderLock{Path: state}).Recorded(); err != nil || rec != cni.KubeRouter {
		t.Errorf("recorded %q, %v", rec, err)
	}
	if _, err := cni.Install(mustParse(t, "provider: calico"), conf, cni.InstallOptions{StateFile: state}); !errors.Is(err, cni.ErrProviderChange) {
		t.Errorf("calico install after kuberouter: %v", err)
	}
	other := filepath.Join(dir, "other")
	if _, err := cni.Install(mustParse(t, "provider: custom"), other, cni.InstallOptions{StateFile: filepath.Join(dir, "c.json")}); !errors.Is(err, cni.ErrCustomProvider) {
		t.Errorf("custom install: %v", err)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("custom install created %s", other)
	}
}
