package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Binary is one compiled program for one platform.
type Binary struct {
	Name string // its file name at the image's root, e.g. "proxy-agent"
	Path string // where it is on this machine
}

// Compile builds c.Packages for platform p into dir with go build:
// static (CGO_ENABLED=0), -trimpath, -ldflags "-s -w" and c.LDFlags (no
// symbol table or DWARF: a third of the size every node pulls; stack traces
// keep their function names and lines). It returns the
// binaries in c.Packages' order. The go command inherits this process's
// environment, so its build cache (GOCACHE) is the one every other build
// on this machine uses.
func Compile(ctx context.Context, c Config, p v1.Platform, dir string) ([]Binary, error) {
	c = c.withDefaults()
	env, err := goEnv(p)
	if err != nil {
		return nil, err
	}
	args := []string{"build", "-trimpath", "-ldflags", strings.TrimSpace("-s -w " + c.LDFlags)}
	args = append(args, "-o", dir+string(filepath.Separator))
	args = append(args, c.Packages...)
	cmd := exec.CommandContext(ctx, c.Go, args...)
	cmd.Dir = c.Dir
	// Later entries win: the platform's settings override any GOARCH,
	// GOARM or CGO_ENABLED the caller's environment has.
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go build for %s (%s %s): %w\n%s", p, strings.Join(env, " "), strings.Join(args, " "), err, out)
	}
	c.Log.Info("compiled", "platform", p.String(), "packages", len(c.Packages), "took", time.Since(start).Round(time.Millisecond))
	bins := make([]Binary, 0, len(c.Packages))
	for _, pkg := range c.Packages {
		name := path.Base(pkg)
		bin := Binary{Name: name, Path: filepath.Join(dir, name)}
		if _, err := os.Stat(bin.Path); err != nil {
			return nil, fmt.Errorf("go build for %s wrote no %s (is %s a main package?): %w", p, name, pkg, err)
		}
		bins = append(bins, bin)
	}
	return bins, nil
}
