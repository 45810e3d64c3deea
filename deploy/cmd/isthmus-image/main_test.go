package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{"help", []string{"--help"}, nil, 0, "--image-version", ""},
		{"no version", nil, nil, 2, "", "--image-version is required"},
		{"unknown flag", []string{"--image-version", "v1", "--nope"}, nil, 2, "", "unknown flag: --nope"},
		{"argument", []string{"--image-version", "v1", "extra"}, nil, 2, "", `unexpected argument "extra"`},
		{"bad platform", []string{"--image-version", "v1", "--platform", "linux/arm/v7/x"}, nil, 2, "", `--platform "linux/arm/v7/x"`},
		{"unsupported platform", []string{"--image-version", "v1", "--platform", "linux/arm"}, nil, 2, "", "arm needs variant v6 or v7"},
		{"bad created", []string{"--image-version", "v1", "--created", "yesterday"}, nil, 2, "", `--created "yesterday"`},
		{"bad epoch", []string{"--image-version", "v1"}, map[string]string{"SOURCE_DATE_EPOCH": "-5"}, 2, "", "$SOURCE_DATE_EPOCH"},
		{"bad ref", []string{"--image-version", "v1", "--ref", "isthmus"}, nil, 2, "", "--ref"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tc.args, &stdout, &stderr, env(tc.env))
			if code != tc.code || !strings.Contains(stdout.String(), tc.out) || !strings.Contains(stderr.String(), tc.err) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
					code, stdout.String(), stderr.String(), tc.code, tc.out, tc.err)
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	c, out, err := parse([]string{"--image-version", "v1.2.3", "--commit", "abc"}, &bytes.Buffer{}, env(map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Ref != "localhost/isthmus:v1.2.3" || out != "bin/isthmus-image.tar" || c.Revision != "abc" ||
		!c.Created.Equal(time.Unix(1700000000, 0)) || len(c.Platforms) != 3 || len(c.Packages) != 3 {
		t.Errorf("parse = %+v, %q", c, out)
	}
	c, _, err = parse([]string{"--image-version", "v1", "--created", "42", "--platform", "linux/arm64,linux/arm/v6"}, &bytes.Buffer{}, env(map[string]string{"SOURCE_DATE_EPOCH": "7"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Created.Unix() != 42 || len(c.Platforms) != 2 || c.Platforms[1].Variant != "v6" {
		t.Errorf("--created and --platform not taken: %+v", c)
	}
}

// TestRun builds a small program into an image and prints what it wrote.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles")
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"--image-version", "v0.1.0", "--output", out, "--platform", "linux/amd64",
		"--package", "isthmus.dev/deploy/image/testdata/hello"}, &stdout, &stderr, env(nil))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{out, "ref:   localhost/isthmus:v0.1.0", "index: sha256:", "linux/amd64    sha256:"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout %q does not say %q", stdout.String(), want)
		}
	}
	if !strings.Contains(stderr.String(), "msg=compiled") {
		t.Errorf("stderr %q: want the progress log", stderr.String())
	}
}
