package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"isthmus.dev/cni"
)

// cniCLI runs the command line with stdout captured.
func cniCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return run(t, args...)
}

func writeConfig(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCNICommands(t *testing.T) {
	dir := t.TempDir()
	kr := writeConfig(t, dir, "kr.yaml", "provider: kuberouter\nkuberouter: {hairpin: true}\n")
	cal := writeConfig(t, dir, "calico.yaml", "provider: calico\n")
	bad := writeConfig(t, dir, "bad.yaml", "provider: kuberouter\ndualStack: {enabled: true}\n")

	if out, err := cniCLI(t, "cni", "validate", "--config", kr, "--print"); err != nil || !strings.Contains(out, "hairpin: true") || !strings.Contains(out, "podCIDR: 10.244.0.0/16") {
		t.Errorf("validate --print: %v\n%s", err, out)
	}
	if _, err := cniCLI(t, "cni", "validate", "--config", bad); err == nil || !strings.Contains(err.Error(), "dualStack.enabled") || !strings.Contains(err.Error(), "kube-router does not support dual-stack") {
		t.Errorf("validate of a dual-stack kube-router: %v", err)
	}
	if _, err := cniCLI(t, "cni", "validate"); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("validate without --config: %v", err)
	}

	out := filepath.Join(dir, "out")
	stdoutText, err := cniCLI(t, "cni", "render", "--config", kr, "--out", out, "--node-pod-cidr", "10.244.9.0/24")
	if err != nil {
		t.Fatal(err)
	}
	conflist := filepath.Join(out, "cni", cni.KubeRouterConflist)
	if !strings.Contains(stdoutText, "wrote "+conflist) || !strings.Contains(stdoutText, "wrote "+filepath.Join(out, "manifests", "kuberouter", "02-daemonset.yaml")) ||
		!strings.Contains(stdoutText, "wrote "+filepath.Join(out, cni.StateFileName)) {
		t.Errorf("render printed %q", stdoutText)
	}
	if data, err := os.ReadFile(conflist); err != nil || !strings.Contains(string(data), `"subnet": "10.244.9.0/24"`) {
		t.Errorf("rendered conflist: %v\n%s", err, data)
	}
	if _, err := cniCLI(t, "cni", "render", "--config", cal, "--out", out, "--force"); err == nil || !strings.Contains(err.Error(), "full cluster redeployment") {
		t.Errorf("calico over kuberouter: %v", err)
	}
	if stdoutText, err := cniCLI(t, "cni", "render", "--config", kr, "--out", out, "--force"); err != nil || strings.Contains(stdoutText, cni.StateFileName) {
		t.Errorf("second render with --force: %v (the provider lock is written once)\n%s", err, stdoutText)
	}
	if r := cli(t, "cni", "render", "--config", kr, "--out", filepath.Join(dir, "o2"), "--node-pod-cidr", "10.99.0.0/24"); r.code != exitUsage ||
		!strings.Contains(r.stderr, "--node-pod-cidr") || !strings.Contains(r.stderr, "inside podCIDR") {
		t.Errorf("node pod CIDR outside podCIDR: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "o2")); err == nil {
		t.Error("a refused render wrote its directory")
	}
}

// TestCNIInstallCommand: install writes the node's conflist, and refuses
// another provider than the recorded one, --force or not.
func TestCNIInstallCommand(t *testing.T) {
	dir := t.TempDir()
	kr := writeConfig(t, dir, "kr.yaml", "provider: kuberouter\n")
	cal := writeConfig(t, dir, "calico.yaml", "provider: calico\n")
	confDir := filepath.Join(dir, "net.d")
	state := filepath.Join(dir, "state.json")
	got, err := cniCLI(t, "cni", "install", "--config", cal, "--cni-conf-dir", confDir, "--state-file", state, "--node-name", "w1")
	if err != nil || strings.TrimSpace(got) != "wrote "+filepath.Join(confDir, cni.CalicoConflist)+" (mode 0644)" {
		t.Fatalf("install: %v, %q", err, got)
	}
	if _, err := cniCLI(t, "cni", "install", "--config", kr, "--cni-conf-dir", confDir, "--state-file", state, "--force"); !errors.Is(err, cni.ErrProviderChange) {
		t.Errorf("kuberouter install over calico: %v", err)
	}
	custom := writeConfig(t, dir, "custom.yaml", "provider: custom\n")
	if _, err := cniCLI(t, "cni", "install", "--config", custom, "--cni-conf-dir", filepath.Join(dir, "c"), "--state-file", filepath.Join(dir, "c.json")); err != nil {
		t.Errorf("custom install: %v", err)
	}

	for name, u := range map[string]string{"render": cniRenderUsage, "install": cniInstallUsage, "validate": cniValidateUsage, "preflight": preflightUsage} {
		if !strings.Contains(u, "Reads") || !strings.Contains(u, "write") {
			t.Errorf("%s --help does not say what it reads and writes", name)
		}
	}
}

func cliListen(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// TestPreflightCommand: the agent port follows --agent-port; the ports of
// the role's isthmus daemon must be free before it is installed (the
// default) and listening after (--not-installed none), and the table says
// which; a failed required check exits 1.
func TestPreflightCommand(t *testing.T) {
	kubelet, apiserver, busy := cliListen(t), cliListen(t), cliListen(t)
	closed := closedLoopbackPort(t)
	args := func(more ...string) []string {
		return append([]string{"preflight", "--role", "worker", "--provider", "custom", "--controller", "127.0.0.1", "--timeout", "1s",
			"--port", "kubelet=" + strconv.Itoa(kubelet), "--port", "apiserver=" + strconv.Itoa(apiserver)}, more...)
	}
	r := cli(t, args("--agent-port", strconv.Itoa(closed), "--admin-port", "0", "--health-port", "0")...)
	if r.code != exitFailure || !strings.Contains(r.stdout, "127.0.0.1:"+strconv.Itoa(closed)+"/tcp") || !strings.Contains(r.stdout, "How to fix") {
		t.Errorf("closed agent port: %+v", r)
	}
	// Before proxy-agent is installed: its admin and health ports must be free.
	r = cli(t, args("--agent-port", strconv.Itoa(apiserver), "--admin-port", strconv.Itoa(closed), "--health-port", "0")...)
	if r.code != exitOK || !strings.Contains(r.stdout, "must be free") || !strings.Contains(r.stdout, "free, for proxy-agent (not installed yet)") {
		t.Errorf("free admin port before proxy-agent: %+v", r)
	}
	r = cli(t, args("--agent-port", strconv.Itoa(apiserver), "--admin-port", strconv.Itoa(closed), "--health-port", strconv.Itoa(busy))...)
	if r.code != exitFailure || !strings.Contains(r.stdout, "in use: something already listens on this port, before proxy-agent is installed") {
		t.Errorf("health port taken before proxy-agent: %+v", r)
	}
	// Installed: the same ports must listen.
	r = cli(t, args("--agent-port", strconv.Itoa(apiserver), "--admin-port", strconv.Itoa(closed), "--health-port", strconv.Itoa(busy), "--not-installed", "none")...)
	if r.code != exitFailure || !strings.Contains(r.stdout, "nothing listens on this port: proxy-agent should be running") ||
		!strings.Contains(r.stdout, "must listen") || strings.Contains(r.stdout, "must be free") {
		t.Errorf("proxy-agent installed, admin port closed: %+v", r)
	}

	cfg := writeConfig(t, t.TempDir(), "calico.yaml", "provider: calico\ncalico: {vxlanPort: 4790}\n")
	if r := cli(t, "preflight", "--role", "worker", "--controller", "127.0.0.1", "--config", cfg, "--provider", "kuberouter"); r.code != exitUsage || !strings.Contains(r.stderr, "disagrees") {
		t.Errorf("--provider against --config: %+v", r)
	}
	for _, bad := range [][]string{
		{"preflight", "--role", "worker", "--controller", "c", "--port", "x=1"},
		{"preflight", "--role", "worker", "--controller", "c", "--admin-port", "70000"},
		{"preflight", "--role", "controller", "--not-installed", "none,proxy-server"},
	} {
		if r := cli(t, bad...); r.code != exitUsage {
			t.Errorf("isthmus %s: %+v, want a usage error", strings.Join(bad, " "), r)
		}
	}
}
