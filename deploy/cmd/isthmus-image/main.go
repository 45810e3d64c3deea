// Command isthmus-image builds isthmus's container image (proxy-server,
// proxy-agent and isthmus, static, non-root, no shell) for several
// platforms and writes one image index as an OCI image layout tarball,
// with no registry and no daemon. `make image` runs it; see package
// isthmus.dev/deploy/image for what the image holds.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"

	"isthmus.dev/deploy/image"
)

const usage = `isthmus-image: build the isthmus container image as an OCI image layout tarball.

Cross-compiles proxy-server, proxy-agent and isthmus (CGO_ENABLED=0,
-trimpath, --ldflags) for every --platform, puts each platform's binaries at
the root of an image that runs as 65532:65532 with no shell and no
entrypoint, and writes all platforms as one image index to --output, named
--ref. No registry and no daemon are used. Import it with:

  ctr images import --all-platforms bin/isthmus-image.tar

Building the same sources with the same flags twice gives the same digests
(fixed file times from --created, sorted entries).

Usage:
  isthmus-image --image-version v1.2.3 [flags]

Flags:
`

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usageErrorf(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run is the command; it returns the exit status: 0, 1 when the build
// failed, 2 for a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c, out, err := parse(args, stdout, getenv)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "isthmus-image: %v\nRun 'isthmus-image --help' for the flags.\n", err)
		return 2
	}
	c.Log = slog.New(slog.NewTextHandler(stderr, nil))
	res, err := image.Build(ctx, c, out)
	if err != nil {
		fmt.Fprintf(stderr, "isthmus-image: %v\n", err)
		return 1
	}
	fmt.Fprint(stdout, res.String())
	return 0
}

// parse maps the command line onto an image.Config and the output path.
func parse(args []string, stdout io.Writer, getenv func(string) string) (image.Config, string, error) {
	c := image.DefaultConfig()
	fs := pflag.NewFlagSet("isthmus-image", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var platforms []string
	for _, p := range c.Platforms {
		platforms = append(platforms, p.String())
	}
	out := fs.StringP("output", "o", "bin/isthmus-image.tar", "the OCI image layout tarball to write (replaced atomically)")
	fs.StringVar(&c.Version, "image-version", "", "the version stamped into the binaries (the Makefile's VERSION): the org.opencontainers.image.version label and the default --ref tag (required)")
	fs.StringVar(&c.Ref, "ref", "", "the image reference written as the index's org.opencontainers.image.ref.name, registry/repository:tag (default localhost/isthmus:<--image-version>)")
	fs.StringVar(&c.Revision, "commit", c.Revision, "the VCS commit: the org.opencontainers.image.revision label")
	fs.StringVar(&c.LDFlags, "ldflags", "", "passed to go build -ldflags (the Makefile's LDFLAGS, which stamp --version's version and commit)")
	fs.StringVar(&c.Source, "source", c.Source, "the org.opencontainers.image.source label")
	fs.StringSliceVar(&platforms, "platform", platforms, "the platforms of the index, os/arch[/variant], comma-separated or repeated")
	fs.StringSliceVar(&c.Packages, "package", c.Packages, "the main packages to build; each binary lands at /<last path element>")
	fs.StringVar(&c.Dir, "dir", "", "run go build in this directory, inside the Go workspace (default the current directory)")
	created := fs.String("created", "", "Unix seconds for every file time and the configs' created time (default $SOURCE_DATE_EPOCH, else 0; the Makefile passes the commit's time)")
	if err := fs.Parse(args); errors.Is(err, pflag.ErrHelp) {
		fmt.Fprint(stdout, usage+fs.FlagUsages())
		return c, "", err
	} else if err != nil {
		return c, "", usageError{err}
	}
	if fs.NArg() > 0 {
		return c, "", usageErrorf("unexpected argument %q: every setting is a flag", fs.Arg(0))
	}
	if c.Version == "" {
		return c, "", usageErrorf("--image-version is required: the version the binaries are stamped with, e.g. --image-version $(git describe --always --dirty)")
	}
	if c.Ref == "" {
		c.Ref = "localhost/isthmus:" + c.Version
	}
	if err := image.CheckRef(c.Ref); err != nil {
		return c, "", usageErrorf("--ref (or --image-version, its default tag): %v", err)
	}
	c.Platforms = c.Platforms[:0]
	for _, s := range platforms {
		p, err := v1.ParsePlatform(s)
		if err == nil {
			err = image.CheckPlatform(*p)
		}
		if err != nil {
			return c, "", usageErrorf("--platform %q: %v (want os/arch[/variant], e.g. linux/arm/v7)", s, err)
		}
		c.Platforms = append(c.Platforms, *p)
	}
	if *created == "" {
		*created = getenv("SOURCE_DATE_EPOCH")
	}
	if *created != "" {
		secs, err := strconv.ParseInt(strings.TrimSpace(*created), 10, 64)
		if err != nil || secs < 0 {
			return c, "", usageErrorf("--created %q (or $SOURCE_DATE_EPOCH) is not a non-negative number of Unix seconds, e.g. $(git log -1 --format=%%ct)", *created)
		}
		c.Created = time.Unix(secs, 0).UTC()
	}
	if err := c.Validate(); err != nil {
		return c, "", usageErrorf("%v (flags --platform, --package)", err)
	}
	return c, *out, nil
}
