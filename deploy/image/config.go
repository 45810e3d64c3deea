package image

import (
	"errors"
	"fmt"
	"log/slog"
	"path"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The user the image runs as: distroless's "nonroot", so volumes and
// PodSecurity policies written for it fit.
const (
	UID      = 65532
	GID      = 65532
	UserName = "nonroot"
)

// Config says what to build.
type Config struct {
	// Ref is the reference written into the tarball as the index's
	// org.opencontainers.image.ref.name annotation, e.g.
	// "localhost/isthmus:v1.2.3". Required.
	Ref string
	// Version and Revision fill the org.opencontainers.image.version and
	// .revision labels. Version is required; Revision defaults to "unknown".
	Version  string
	Revision string
	// Source fills the org.opencontainers.image.source label; default
	// DefaultSource.
	Source string
	// LDFlags are passed to go build -ldflags after "-s -w" (the Makefile's
	// LDFLAGS, which stamp the version and commit into tunnel/buildinfo).
	LDFlags string
	// Packages are the main packages built; each binary is named after the
	// last element of its import path and placed at the image's root.
	// Default DefaultPackages().
	Packages []string
	// Platforms are the images of the index, in this order. Only linux is
	// supported; arm takes its GOARM from the variant (v6 or v7).
	// Default DefaultPlatforms().
	Platforms []v1.Platform
	// Dir is where go build runs: any directory inside the Go workspace.
	// Empty: the current directory.
	Dir string
	// Go is the go command. Empty: "go" from PATH.
	Go string
	// Created is every file's time in the layers and the configs' created
	// time. Zero: the Unix epoch. Fixed, so builds are reproducible.
	Created time.Time
	// Log receives progress. Nil: discarded.
	Log *slog.Logger
}

// DefaultSource is the org.opencontainers.image.source label when
// Config.Source is empty: the home of the isthmus.dev module paths.
const DefaultSource = "https://isthmus.dev"

// Title is the org.opencontainers.image.title label.
const Title = "isthmus"

// DefaultPackages are proxy-server, proxy-agent and isthmus.
func DefaultPackages() []string {
	return []string{
		"isthmus.dev/proxy-server/cmd/proxy-server",
		"isthmus.dev/proxy-agent/cmd/proxy-agent",
		"isthmus.dev/isthmus/cmd/isthmus",
	}
}

// DefaultPlatforms are linux/amd64, linux/arm64 and linux/arm/v7 (armv7
// nodes run kube-router clusters).
func DefaultPlatforms() []v1.Platform {
	return []v1.Platform{
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64"},
		{OS: "linux", Architecture: "arm", Variant: "v7"},
	}
}

// DefaultConfig is a Config with every default filled in except Ref and
// Version, which the caller must set.
func DefaultConfig() Config {
	return Config{
		Revision:  "unknown",
		Source:    DefaultSource,
		Packages:  DefaultPackages(),
		Platforms: DefaultPlatforms(),
		Go:        "go",
		Created:   time.Unix(0, 0).UTC(),
	}
}

// withDefaults fills the zero fields of c.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Revision == "" {
		c.Revision = d.Revision
	}
	if c.Source == "" {
		c.Source = d.Source
	}
	if len(c.Packages) == 0 {
		c.Packages = d.Packages
	}
	if len(c.Platforms) == 0 {
		c.Platforms = d.Platforms
	}
	if c.Go == "" {
		c.Go = d.Go
	}
	if c.Created.IsZero() {
		c.Created = d.Created
	}
	c.Created = c.Created.UTC().Truncate(time.Second)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate names the first field that is wrong and what it accepts.
func (c Config) Validate() error {
	if c.Ref == "" {
		return errors.New("Ref is empty: give the image reference, e.g. localhost/isthmus:v1.2.3")
	}
	if err := CheckRef(c.Ref); err != nil {
		return fmt.Errorf("Ref: %w", err)
	}
	if c.Version == "" {
		return errors.New("Version is empty: give the version stamped into the binaries, e.g. v1.2.3")
	}
	seen := map[string]string{}
	for _, p := range c.Packages {
		bin := path.Base(p)
		if bin == "." || bin == "/" || bin == "etc" {
			return fmt.Errorf("Packages: %q does not name a binary that can sit at the image's root", p)
		}
		if other, dup := seen[bin]; dup {
			return fmt.Errorf("Packages: %q and %q would both be /%s", other, p, bin)
		}
		seen[bin] = p
	}
	plats := map[string]bool{}
	for _, p := range c.Platforms {
		if err := CheckPlatform(p); err != nil {
			return fmt.Errorf("Platforms: %w", err)
		}
		if plats[p.String()] {
			return fmt.Errorf("Platforms: %s is listed twice", p)
		}
		plats[p.String()] = true
	}
	return nil
}

// CheckRef says whether ref can name the image: a full reference with a
// registry and a tag or digest, as containerd stores names as given.
func CheckRef(ref string) error {
	if _, err := name.ParseReference(ref, name.StrictValidation); err != nil {
		return fmt.Errorf("%q is not a full image reference registry/repository:tag, e.g. localhost/isthmus:v1.2.3 (containerd keeps names as given, so the registry part is needed): %w", ref, err)
	}
	return nil
}

// CheckPlatform says whether images are built for p.
func CheckPlatform(p v1.Platform) error {
	_, err := goEnv(p)
	return err
}

// goEnv is the environment that makes go build target p.
func goEnv(p v1.Platform) ([]string, error) {
	if p.OS != "linux" {
		return nil, fmt.Errorf("%s: only linux images are built (os %q)", p, p.OS)
	}
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + p.Architecture}
	switch p.Architecture {
	case "amd64", "arm64", "ppc64le", "s390x", "riscv64":
		if p.Variant != "" && !(p.Architecture == "arm64" && p.Variant == "v8") {
			return nil, fmt.Errorf("%s: variant %q is not supported for %s (leave it empty)", p, p.Variant, p.Architecture)
		}
	case "arm":
		switch p.Variant {
		case "v6", "v7":
			env = append(env, "GOARM="+p.Variant[1:])
		default:
			return nil, fmt.Errorf("%s: arm needs variant v6 or v7, not %q", p, p.Variant)
		}
	default:
		return nil, fmt.Errorf("%s: architecture %q is not one of amd64, arm64, arm, ppc64le, s390x, riscv64", p, p.Architecture)
	}
	return env, nil
}
