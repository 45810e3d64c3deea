package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"isthmus.dev/isthmus/manifests"
)

func TestManifestsDirectory(t *testing.T) {
	out := filepath.Join(t.TempDir(), "deploy")
	report := mustRun(t, "manifests", "--server-address", "192.0.2.10", "--server-address", "192.0.2.11", "--out", out,
		"--auth", "certificates", "--mode", "http-connect", "--image", "localhost/isthmus:v9", "--agent-cpu-request", "20m")
	for _, f := range []string{manifests.FileIndex, manifests.FileCluster, manifests.FileStaticPod, manifests.FileSystemdUnit,
		manifests.FileEgressConfig, manifests.FileAPIServer} {
		path := filepath.Join(out, f)
		if !strings.Contains(report, "wrote "+path) {
			t.Errorf("report does not name %s:\n%s", path, report)
		}
		if _, err := os.Stat(path); err != nil {
			t.Error(err)
		}
	}
	index, err := os.ReadFile(filepath.Join(out, manifests.FileIndex))
	if err != nil || !strings.Contains(report, string(index)) {
		t.Errorf("the index printed is not README.md (%v)", err)
	}
	b, err := os.ReadFile(filepath.Join(out, manifests.FileCluster))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifests.DecodeStrict(b)
	if err != nil {
		t.Fatal(err)
	}
	ds := objs[len(objs)-1].(*appsv1.DaemonSet)
	c := ds.Spec.Template.Spec.Containers[0]
	if c.Image != "localhost/isthmus:v9" || c.Resources.Requests.Cpu().String() != "20m" ||
		!slices.Contains(c.Args, "--proxy-server-host=192.0.2.10,192.0.2.11") || !slices.Contains(c.Args, "--agent-key=/etc/konnectivity-agent/cert/tls.key") {
		t.Errorf("DaemonSet container %+v", c)
	}
	pod, err := os.ReadFile(filepath.Join(out, manifests.FileStaticPod))
	if err != nil || !strings.Contains(string(pod), "--mode=http-connect") || !strings.Contains(string(pod), "--server-count=2") {
		t.Errorf("static Pod (%v):\n%s", err, pod)
	}

	// Again: refused without --force, nothing touched; replaced with it.
	_, err = run(t, "manifests", "--server-address", "192.0.2.10", "--out", out)
	if !errors.Is(err, os.ErrExist) || !strings.Contains(err.Error(), "--force") {
		t.Errorf("over an existing directory: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(out, manifests.FileCluster)); string(after) != string(b) {
		t.Error("a refused render changed cluster.yaml")
	}
	mustRun(t, "manifests", "--server-address", "192.0.2.10", "--out", out, "--force")
	if after, _ := os.ReadFile(filepath.Join(out, manifests.FileCluster)); string(after) == string(b) {
		t.Error("--force did not replace cluster.yaml")
	}
}

func TestManifestsStream(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(wd)
	out := mustRun(t, "manifests", "--server-address", "lb.example.internal", "--leases", "--out", "-")
	objs, err := manifests.DecodeStrict([]byte(out))
	if err != nil {
		t.Fatalf("--out - is not one strict YAML stream: %v\n%s", err, out)
	}
	r, err := manifests.Render(manifests.Options{ServerAddresses: []string{"lb.example.internal"}, Leases: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != len(r.Cluster.List()) {
		t.Errorf("%d objects on stdout, %d rendered", len(objs), len(r.Cluster.List()))
	}
	if after, _ := os.ReadDir(wd); len(after) != len(before) {
		t.Error("--out - wrote into the current directory")
	}
}

func TestManifestsUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--server-address", "192.0.2.10"}, "--out is required"},
		{[]string{"--out", "-"}, "--server-address is required"},
		{[]string{"--out", "-", "--server-address", "192.0.2.10:8132"}, "--server-address \"192.0.2.10:8132\""},
		{[]string{"--out", "-", "--server-address", "a.example", "--mode", "tcp"}, "--mode \"tcp\""},
		{[]string{"--out", "-", "--server-address", "a.example,b.example", "--leases"}, "--leases count"},
		{[]string{"--out", "-", "--server-address", "a.example", "--server-count", "0"}, "--server-count 0"},
		{[]string{"--out", "-", "--server-address", "a.example", "--agent-memory-request", "lots"}, "--agent-memory-request \"lots\""},
		{[]string{"--out", "-", "--server-address", "a.example", "--kubeconfig", "conf"}, "--kubeconfig \"conf\""},
	} {
		_, err := run(t, append([]string{"manifests"}, tc.args...)...)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want a usage error with %q, got %v", tc.args, tc.want, err)
		}
	}
	_, err := run(t, "manifests", "--out", "-", "--server-address", "a.example", "--agent-ca-file", filepath.Join(t.TempDir(), "missing.crt"))
	var ue *usageError
	if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "--agent-ca-file") {
		t.Errorf("a missing CA file: %v", err)
	}
}
