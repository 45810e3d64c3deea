package buildinfo

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestUnstamped(t *testing.T) {
	i := Get()
	if i.Version == "" || i.Commit == "" || i.GoVersion != runtime.Version() {
		t.Errorf("Get() = %+v: every field must be set", i)
	}
	if want := i.Version + " (commit " + i.Commit + ", " + runtime.Version() + ")"; i.String() != want {
		t.Errorf("String() = %q, want %q", i.String(), want)
	}
}

// TestStamped builds a program with the -ldflags the Makefile uses and runs it.
func TestStamped(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	bin := filepath.Join(t.TempDir(), "stamp")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "-ldflags",
		"-X isthmus.dev/tunnel/buildinfo.version=v9.8.7 -X isthmus.dev/tunnel/buildinfo.commit=0123abcd",
		"./testdata/stamp")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(t.Context(), bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), "v9.8.7 (commit 0123abcd, "+runtime.Version()+")"; got != want {
		t.Errorf("stamped binary says %q, want %q", got, want)
	}
}
