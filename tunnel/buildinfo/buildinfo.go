// Package buildinfo says which build of isthmus is running: the version and
// commit stamped at build time, for --version, the start-up log line and
// the build_info metric of every binary.
//
// The Makefile and the test harness stamp them:
//
//	go build -ldflags "-X isthmus.dev/tunnel/buildinfo.version=v1.2.3 -X isthmus.dev/tunnel/buildinfo.commit=abc123"
//
// Unstamped builds (go build, go run, go test) fall back to what the Go
// toolchain recorded: the module version and the VCS revision, if any.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Stamped with -ldflags -X; empty in unstamped builds.
var (
	version string
	commit  string
)

// Info describes one build.
type Info struct {
	Version   string // e.g. v0.3.0, or v0.3.0-5-gabc123-dirty; "dev" when unknown
	Commit    string // VCS revision; "unknown" when not recorded
	GoVersion string
}

// Get returns the running binary's build information.
func Get() Info {
	i := Info{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && i.Commit == "" {
				i.Commit = s.Value
			}
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}

// String is the line --version prints, after the program's name.
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, %s)", i.Version, i.Commit, i.GoVersion)
}
