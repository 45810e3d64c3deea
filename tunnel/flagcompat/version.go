package flagcompat

import (
	"fmt"
	"io"

	"github.com/spf13/pflag"
	"isthmus.dev/tunnel/buildinfo"
)

// AddVersion adds --version to fs. When it is set, main calls PrintVersion
// and exits 0.
func AddVersion(fs *pflag.FlagSet) *bool {
	return fs.Bool("version", false, "print the version and commit of this build, and exit")
}

// PrintVersion writes "program <version> (commit <commit>, <go version>)".
func PrintVersion(w io.Writer, program string) {
	fmt.Fprintf(w, "%s %s\n", program, buildinfo.Get())
}
