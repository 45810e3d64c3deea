package cnitest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// PluginsModule is the module the plugins are built from, at the version
// the workspace pins (cni/go.mod lists the plugins as tools, so their
// dependencies stay in go.sum).
const PluginsModule = "github.com/containernetworking/plugins"

// PluginNames are the plugins built: what the kube-router conflist uses,
// and loopback, which every runtime runs for lo.
var PluginNames = []string{"bridge", "host-local", "loopback", "portmap"}

var pluginPkg = map[string]string{
	"bridge":     PluginsModule + "/plugins/main/bridge",
	"host-local": PluginsModule + "/plugins/ipam/host-local",
	"loopback":   PluginsModule + "/plugins/main/loopback",
	"portmap":    PluginsModule + "/plugins/meta/portmap",
}

var (
	pluginsOnce sync.Once
	pluginsDir  string
	pluginsErr  error
)

// Plugins returns a directory holding the built plugins (PluginNames). They
// are built once per machine and plugins version into the user's cache
// directory (os.UserCacheDir, or the temp dir), then reused; the build
// runs from the isthmus.dev/cni module, so it uses the pinned version.
func Plugins(t testing.TB) string {
	t.Helper()
	pluginsOnce.Do(func() { pluginsDir, pluginsErr = buildPlugins() })
	if pluginsErr != nil {
		t.Fatalf("build the CNI plugins: %v", pluginsErr)
	}
	return pluginsDir
}

func buildPlugins() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	modDir, err := goList(ctx, "", "-m", "-f", "{{.Dir}}", "isthmus.dev/cni")
	if err != nil {
		return "", err
	}
	version, err := goList(ctx, modDir, "-m", "-f", "{{.Version}}", PluginsModule)
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "isthmus", "cni-plugins", version+"-"+runtime.Version()+"-"+runtime.GOARCH)
	if complete(dir) {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	staging, err := os.MkdirTemp(filepath.Dir(dir), ".build-*")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(staging)
	args := []string{"build", "-o", staging + "/"}
	for _, name := range PluginNames {
		args = append(args, pluginPkg[name])
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), modDir, err, out)
	}
	// Another test process may have finished first: either copy will do.
	if err := os.Rename(staging, dir); err != nil && !complete(dir) {
		return "", fmt.Errorf("move the plugins into %s: %w", dir, err)
	}
	return dir, nil
}

func complete(dir string) bool {
	for _, name := range PluginNames {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func goList(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"list"}, args...)...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("go list %s: %w\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", fmt.Errorf("go list %s: %w", strings.Join(args, " "), err)
	}
	s := strings.TrimSpace(string(out))
	if s == "" {
		return "", fmt.Errorf("go list %s: empty answer", strings.Join(args, " "))
	}
	return s, nil
}
