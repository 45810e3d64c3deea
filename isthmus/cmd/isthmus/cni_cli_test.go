package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"isthmus.dev/cni"
)

// cniCLI runs the command line with stdout captured.
func cniCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var buf bytes.Buffer
	stdout = &buf
	defer func() { stdout = os.Stdout }()
	err := dispatch(args)
	return buf.String(), err
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
	if !strings.Contains(stdoutText, conflist) || !strings.Contains(stdoutText, filepath.Join(out, "manifests", "kuberouter")) {
		t.Errorf("render printed %q", stdoutText)
	}
	if data, err := os.ReadFile(conflist); err != nil || !strings.Contains(string(data), `"subnet": "10.244.9.0/24"`) {
		t.Errorf("rendered conflist: %v\n%s", err, data)
	}
	if _, err := cniCLI(t, "cni", "render", "--config", cal, "--out", out); err == nil || !strings.Contains(err.Error(), "full cluster redeployment") {
		t.Errorf("calico over kuberouter: %v", err)
	}
	if _, err := cniCLI(t, "cni", "render", "--config", kr, "--out", filepath.Join(dir, "o2"), "--node-pod-cidr", "10.99.0.0/24"); err == nil || !strings.Contains(err.Error(), "inside podCIDR") {
		t.Errorf("node pod CIDR outside podCIDR: %v", err)
	}

	confDir := filepath.Join(dir, "net.d")
	state := filepath.Join(dir, "state.json")
	got, err := cniCLI(t, "cni", "install", "--config", cal, "--cni-conf-dir", confDir, "--state-file", state, "--node-name", "w1")
	if err != nil || strings.TrimSpace(got) != filepath.Join(confDir, cni.CalicoConflist) {
		t.Fatalf("install: %v, %q", err, got)
	}
	if _, err := cniCLI(t, "cni", "install", "--config", kr, "--cni-conf-dir", confDir, "--state-file", state); !errors.Is(err, cni.ErrProviderChange) {
		t.Errorf("kuberouter install over calico: %v", err)
	}
	custom := writeConfig(t, dir, "custom.yaml", "provider: custom\n")
	if _, err := cniCLI(t, "cni", "install", "--config", custom, "--cni-conf-dir", filepath.Join(dir, "c"), "--state-file", filepath.Join(dir, "c.json")); err != nil {
		t.Errorf("custom install: %v", err)
	}

	if _, err := cniCLI(t, "cni", "frobnicate"); err == nil {
		t.Errorf("unknown cni command accepted")
	}
	for _, args := range [][]string{{"cni", "--help"}, {"cni", "validate", "--help"}, {"cni", "render", "--help"}, {"cni", "install", "--help"}, {"preflight", "--help"}} {
		if _, err := cniCLI(t, args...); !errors.Is(err, pflag.ErrHelp) {
			t.Errorf("isthmus %s: %v", strings.Join(args, " "), err)
		}
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

func TestPreflightCommand(t *testing.T) {
	kubelet, apiserver := cliListen(t), cliListen(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	args := []string{"preflight", "--role", "worker", "--provider", "custom", "--controller", "127.0.0.1", "--timeout", "1s",
		"--port", "kubelet=" + strconv.Itoa(kubelet), "--port", "apiserver=" + strconv.Itoa(apiserver)}

	out, err := cniCLI(t, append(args, "--port", "konnectivity="+strconv.Itoa(closed))...)
	if err == nil || !strings.Contains(out, "FAIL") || !strings.Contains(out, "How to fix") {
		t.Errorf("closed agent port: %v\n%s", err, out)
	}
	out, err = cniCLI(t, append(args, "--port", "konnectivity="+strconv.Itoa(apiserver))...)
	if err != nil || strings.Contains(out, "FAIL") {
		t.Errorf("everything open: %v\n%s", err, out)
	}

	cfg := writeConfig(t, t.TempDir(), "calico.yaml", "provider: calico\ncalico: {vxlanPort: 4790}\n")
	if _, err := cniCLI(t, "preflight", "--role", "worker", "--controller", "127.0.0.1", "--config", cfg, "--provider", "kuberouter"); err == nil || !strings.Contains(err.Error(), "disagrees") {
		t.Errorf("--provider against --config: %v", err)
	}
	for _, bad := range [][]string{{"preflight", "--role", "master"}, {"preflight", "--role", "worker"}, {"preflight", "--role", "worker", "--controller", "c", "--port", "x=1"}} {
		if _, err := cniCLI(t, bad...); err == nil {
			t.Errorf("isthmus %s accepted", strings.Join(bad, " "))
		}
	}
}
