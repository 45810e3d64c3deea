package main

import (
	"strings"
	"testing"

	"isthmus.dev/tunnel/buildinfo"
)

func TestVersion(t *testing.T) {
	want := "isthmus " + buildinfo.Get().String() + "\n"
	for _, arg := range []string{"--version", "version"} {
		if out := mustRun(t, arg); out != want {
			t.Errorf("isthmus %s printed %q, want %q", arg, out, want)
		}
	}
	for _, args := range [][]string{{"version", "extra"}, {"--version", "extra"}} {
		if r := cli(t, args...); r.code != exitUsage || !strings.Contains(r.stderr, "unexpected arguments") {
			t.Errorf("isthmus %s: %+v", strings.Join(args, " "), r)
		}
	}
}
