// Package harness starts real isthmus and upstream ANP processes on real
// sockets for the integration tests and benchmarks, and cleans up after them.
package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Binaries are the programs the tests run.
type Binaries struct {
	ProxyServer, ProxyAgent string // isthmus
	ANPServer, ANPAgent     string // upstream apiserver-network-proxy v0.36.0
}

var (
	buildOnce sync.Once
	built     Binaries
	buildErr  error
)

// Build compiles the binaries once per test process into a temporary
// directory (removed by Cleanup). With race, isthmus binaries are built with
// the race detector, so a race in a daemon fails the test that saw it.
func Build(race bool) (Binaries, error) {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "isthmus-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		b := Binaries{
			ProxyServer: filepath.Join(dir, "proxy-server"),
			ProxyAgent:  filepath.Join(dir, "proxy-agent"),
			ANPServer:   filepath.Join(dir, "anp-proxy-server"),
			ANPAgent:    filepath.Join(dir, "anp-proxy-agent"),
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		ours := []string{"build", "-o", dir + "/"}
		if race && raceSupported() {
			ours = append(ours, "-race")
		}
		// Stamped as the Makefile does: --version, the start-up log line and
		// build_info say StampedVersion and this checkout's commit.
		commit := "unknown"
		if out, err := exec.CommandContext(ctx, "git", "rev-parse", "HEAD").Output(); err == nil {
			commit = strings.TrimSpace(string(out))
		}
		ours = append(ours, "-ldflags", "-X isthmus.dev/tunnel/buildinfo.version="+StampedVersion+" -X isthmus.dev/tunnel/buildinfo.commit="+commit)
		ours = append(ours, "isthmus.dev/proxy-server/cmd/proxy-server", "isthmus.dev/proxy-agent/cmd/proxy-agent")
		if err := goCmd(ctx, ours...); err != nil {
			buildErr = err
			return
		}
		if err := goCmd(ctx, "build", "-o", b.ANPServer, "sigs.k8s.io/apiserver-network-proxy/cmd/server"); err != nil {
			buildErr = err
			return
		}
		if err := goCmd(ctx, "build", "-o", b.ANPAgent, "sigs.k8s.io/apiserver-network-proxy/cmd/agent"); err != nil {
			buildErr = err
			return
		}
		built = b
	})
	return built, buildErr
}

var buildDir string

// StampedVersion is the version Build stamps into isthmus's binaries.
const StampedVersion = "v0.0.0-integration"

// Cleanup removes the built binaries; call it from TestMain.
func Cleanup() {
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
}

func raceSupported() bool { return runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64" }

func goCmd(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, out)
	}
	return nil
}

// Main is the TestMain of a package of daemon tests: it builds the binaries
// under test (race-enabled where supported) into *bins, runs the tests,
// ends the Shared fixtures and removes the build.
func Main(m *testing.M, bins *Binaries, opts ...MainOption) {
	var cfg mainConfig
	for _, o := range opts {
		o(&cfg)
	}
	var err error
	*bins, err = Build(true)
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the binaries under test:", err)
		os.Exit(1)
	}
	before := goleak.IgnoreCurrent() // what runs before any test
	code := m.Run()
	if !pkgScope.end() && code == 0 {
		fmt.Fprintln(os.Stderr, "FAIL: a shared fixture reported an error at its cleanup (above)")
		code = 1
	}
	if cfg.leakAtEnd && code == 0 {
		if err := findLeaks(append([]goleak.Option{before}, cfg.ignore...)); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: goroutines left after the tests:", err)
			code = 1
		}
	}
	Cleanup()
	os.Exit(code)
}
