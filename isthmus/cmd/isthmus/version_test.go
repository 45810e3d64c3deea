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
	if _, err := run(t, "version", "extra"); err == nil || !strings.Contains(err.Error(), "unexpected arguments") {
		t.Errorf("isthmus version extra: %v", err)
	}
}
