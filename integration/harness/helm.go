package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// HelmVersion is the helm the chart tests build from the Go module proxy
// (see helm/go.mod).
const HelmVersion = "v3.22.0"

// HelmBinary builds helm HelmVersion once per machine (BuildTool) and
// returns its path; the first build takes about 2 minutes on 2 cores.
func HelmBinary(t testing.TB) string {
	t.Helper()
	// As helm's Makefile: the Kubernetes version helm assumes without a
	// cluster (helm template, lint) is the one of its client-go, v0.X -> 1.X.
	const kubeMinor = "37"
	ldflags := strings.Join([]string{
		"-X helm.sh/helm/v3/internal/version.version=" + HelmVersion,
		"-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
		"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
		"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=" + kubeMinor,
		"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
		"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=" + kubeMinor,
	}, " ")
	return BuildTool(t, Tool{
		Name: "helm-" + HelmVersion, Module: "helm", Package: "helm.sh/helm/v3/cmd/helm",
		LDFlags: ldflags, Timeout: 20 * time.Minute, FirstBuild: "about 2 minutes on 2 cores",
	})
}

// Helm runs one helm command and returns its standard output, or an error
// carrying its standard error. Helm's configuration, cache and data
// directories are the test's own, and no kubeconfig is read: nothing of
// the user's helm or cluster is touched.
func Helm(t testing.TB, bin string, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"), "KUBECONFIG="+filepath.Join(home, "no-kubeconfig"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// RepoDir is the root of the isthmus checkout (the folder of go.work).
func RepoDir(t testing.TB) string {
	t.Helper()
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the harness source to locate the checkout")
	}
	return filepath.Join(filepath.Dir(self), "..", "..")
}
