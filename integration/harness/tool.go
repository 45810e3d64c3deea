package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// Tool is a program the tests build from the Go module proxy (never a
// downloaded binary): a builder module of its own (a folder of
// integration/ with a go.mod and go.sum naming the program as a tool, not
// in go.work) pins it and everything it needs.
type Tool struct {
	// Name is the program and its version, the cached file's prefix
	// ("kube-apiserver-v1.37.2").
	Name string
	// Module is the builder module's folder under integration/.
	Module string
	// Package is the main package to build.
	Package string
	// LDFlags are go build's -ldflags (version stamps).
	LDFlags string
	// Env is appended to the build's environment after GOWORK=off and
	// GOFLAGS=-mod=readonly (CGO_ENABLED=0, as the program's own release
	// builds); it is part of the cache key.
	Env []string
	// Timeout bounds the build; a test that finds another building it
	// waits that long and 5 minutes more.
	Timeout time.Duration
	// FirstBuild says how long a first build takes, for the log.
	FirstBuild string
}

// BuildTool builds tool once per machine and returns its path. The binary
// is cached under the user cache directory (~/.cache/isthmus), keyed by
// the builder module's go.mod and go.sum (and the tool's Env), so a new
// pin builds anew and the same pin is never built twice; test processes
// building it at once wait for each other.
func BuildTool(t testing.TB, tool Tool) string {
	t.Helper()
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatalf("cannot find the harness source to locate the %s builder module", tool.Name)
	}
	modDir := filepath.Join(filepath.Dir(self), "..", tool.Module)
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			t.Fatalf("%s builder module: %v", tool.Name, err)
		}
		h.Write(b)
	}
	for _, e := range tool.Env {
		h.Write([]byte("\x00" + e))
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "isthmus")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, tool.Name+"-"+hex.EncodeToString(h.Sum(nil))[:12])
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	// One build at a time on this machine: another test package may be
	// building it now (up to the build's own bound).
	unlock := bhLock(t, bin+".lock", tool.Timeout+5*time.Minute)
	defer unlock()
	if _, err := os.Stat(bin); err == nil {
		return bin // another test process built it while we waited
	}
	t.Logf("building %s from the Go module proxy into %s (%s the first time)", tool.Name, bin, tool.FirstBuild)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), tool.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", tool.LDFlags, "-o", bin+".tmp", tool.Package)
	cmd.Dir = modDir
	cmd.Env = append(append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly"), tool.Env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", tool.Name, err, out)
	}
	if err := os.Rename(bin+".tmp", bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %v", tool.Name, time.Since(start).Round(time.Second))
	return bin
}
