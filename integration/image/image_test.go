// Package image builds isthmus's container image with the same builder as
// `make image` (isthmus.dev/deploy/cmd/isthmus-image), imports the OCI
// tarball into a containerd of its own (Debian's containerd package) with
// ctr, and runs the binaries inside it with ctr run as the image's
// non-root user.
package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// ref is the name the test's image is built and imported as.
const ref = "localhost/isthmus:" + harness.StampedVersion

// platforms are the index's platforms, as the builder orders them.
var platforms = []string{"linux/amd64", "linux/arm64", "linux/arm/v7"}

func TestImageInContainerd(t *testing.T) {
	requireContainerd(t)
	if runtime.GOARCH != "amd64" {
		t.Skipf("runs the image's linux/amd64 binaries; this machine is %s", runtime.GOARCH)
	}
	ctx := t.Context()
	work := t.TempDir()

	tarball := filepath.Join(work, "isthmus-image.tar")
	built := buildImage(t, tarball)
	if got := strings.Join(built.platforms(), " "); got != strings.Join(platforms, " ") {
		t.Fatalf("the tarball's index has platforms %s, want %s", got, strings.Join(platforms, " "))
	}

	ctd := startContainerd(t)
	if _, err := ctd.ctr(ctx, "images", "import", "--all-platforms", "--snapshotter", snapshotter, tarball); err != nil {
		t.Fatal(err)
	}
	t.Run("imported", func(t *testing.T) { checkImported(t, ctd, built) })

	// proxy-agent first: done-when 5 of issue 10.
	for i, bin := range []string{"proxy-agent", "proxy-server", "isthmus"} {
		out, err := ctd.run(ctx, ref, fmt.Sprintf("version-%d", i), nil, "/"+bin, "--version")
		if err != nil {
			t.Fatalf("%s --version in the image: %v", bin, err)
		}
		if want := bin + " " + harness.StampedVersion + " (commit "; !strings.HasPrefix(out, want) {
			t.Errorf("%s --version in the image printed %q, want it to start with %q", bin, out, want)
		}
	}

	t.Run("runs as 65532", func(t *testing.T) { checkUser(t, ctd, work) })

	t.Run("no shell", func(t *testing.T) {
		out, err := ctd.run(ctx, ref, "shell", nil, "/bin/sh", "-c", "true")
		if err == nil || !strings.Contains(out, "no such file or directory") {
			t.Errorf("/bin/sh in the image: %v, %q; want it missing", err, out)
		}
	})

	if _, err := ctd.ctr(ctx, "images", "rm", "--sync", ref); err != nil {
		t.Error(err)
	}

	// The same sources built again give the same image; only linux/amd64,
	// to keep the second build to one platform's link.
	t.Run("reproducible", func(t *testing.T) {
		again := buildImage(t, filepath.Join(work, "again.tar"), "--platform", "linux/amd64")
		if len(again.index.Manifests) != 1 || again.index.Manifests[0].Digest != built.index.Manifests[0].Digest {
			t.Errorf("building linux/amd64 again gave %v, want %s as the first build", again.index.Manifests, built.index.Manifests[0].Digest)
		}
	})
}

// checkImported asks containerd what it imported: the name from the
// tarball's ref annotation, pointing at the builder's index, with every
// platform's content present.
func checkImported(t *testing.T, ctd *containerd, built builtImage) {
	out, err := ctd.ctr(t.Context(), "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == ref {
			line = l
		}
	}
	if line == "" || !strings.Contains(line, built.digest) {
		t.Fatalf("ctr images ls has no %s at %s:\n%s", ref, built.digest, out)
	}
	for _, p := range platforms {
		if !strings.Contains(line, p) {
			t.Errorf("ctr images ls lists %s without %s: %s", ref, p, line)
		}
	}
	raw, err := ctd.ctr(t.Context(), "content", "get", built.digest)
	if err != nil {
		t.Fatal(err)
	}
	var idx ociIndex
	if err := json.Unmarshal([]byte(raw), &idx); err != nil {
		t.Fatalf("containerd's copy of the index: %v\n%s", err, raw)
	}
	if got := strings.Join(idx.platforms(), " "); got != strings.Join(platforms, " ") {
		t.Errorf("containerd's index has platforms %s, want %s", got, strings.Join(platforms, " "))
	}
	for _, m := range idx.Manifests {
		if _, err := ctd.ctr(t.Context(), "content", "get", m.Digest); err != nil {
			t.Errorf("the %s manifest was not imported: %v", m.Platform, err)
		}
	}
}

// checkUser runs isthmus in the image to write a CA into a bind-mounted
// directory: the files' owner is the user the process ran as.
func checkUser(t *testing.T, ctd *containerd, work string) {
	out := filepath.Join(work, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(out, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	mount := []string{"--mount", "type=bind,src=" + out + ",dst=/out,options=rbind:rw"}
	if msg, err := ctd.run(t.Context(), ref, "user", mount, "/isthmus", "certs", "ca", "--dir", "/out"); err != nil {
		t.Fatalf("isthmus certs ca in the image: %v\n%s", err, msg)
	}
	fi, err := os.Stat(filepath.Join(out, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65532 || st.Gid != 65532 {
		t.Errorf("a file written in the image is owned by %d:%d, want 65532:65532 (the image's user)", st.Uid, st.Gid)
	}
}

// builtImage is what the builder wrote: the index that index.json names.
type builtImage struct {
	digest string // of the image index
	index  ociIndex
}

func (b builtImage) platforms() []string { return b.index.platforms() }

type ociIndex struct {
	MediaType string `json:"mediaType"`
	Manifests []struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Annotations map[string]string `json:"annotations"`
		Platform    *struct {
			OS, Architecture, Variant string
		} `json:"platform"`
	} `json:"manifests"`
}

func (i ociIndex) platforms() []string {
	var ps []string
	for _, m := range i.Manifests {
		if m.Platform == nil {
			ps = append(ps, "(none)")
			continue
		}
		p := m.Platform.OS + "/" + m.Platform.Architecture
		if m.Platform.Variant != "" {
			p += "/" + m.Platform.Variant
		}
		ps = append(ps, p)
	}
	return ps
}

// buildImage runs the builder `make image` runs, stamped as the harness
// stamps the daemons, into out, and reads back the index. The go builds
// use this machine's Go build cache, shared with the rest of the suite.
func buildImage(t *testing.T, out string, extra ...string) builtImage {
	t.Helper()
	// Cross-compiling three programs for three platforms with a cold build
	// cache takes about 9 minutes on 2 busy cores; warm, under a minute.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	commit := "unknown"
	if b, err := exec.CommandContext(ctx, "git", "rev-parse", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(b))
	}
	args := []string{"run", "isthmus.dev/deploy/cmd/isthmus-image", "--output", out,
		"--ref", ref, "--image-version", harness.StampedVersion, "--commit", commit, "--created", "1700000000",
		"--ldflags", "-X isthmus.dev/tunnel/buildinfo.version=" + harness.StampedVersion + " -X isthmus.dev/tunnel/buildinfo.commit=" + commit}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", append(args, extra...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("building the image: %v\n%s", err, stderr.String())
	}
	t.Logf("built the image in %v:\n%s", time.Since(start).Round(time.Second), stdout)
	return readTarball(t, out)
}

// readTarball reads index.json and the index it names from the OCI
// layout tarball, checking the ref annotation on the way.
func readTarball(t *testing.T, path string) builtImage {
	t.Helper()
	files := map[string][]byte{}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		// Keep the small files only: the JSON ones, not the layers.
		if h.Typeflag == tar.TypeReg && h.Size < 1<<20 {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
	var top ociIndex
	if err := json.Unmarshal(files["index.json"], &top); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(top.Manifests) != 1 || top.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != ref {
		t.Fatalf("index.json = %s, want one image index named %s", files["index.json"], ref)
	}
	digest := top.Manifests[0].Digest
	var idx ociIndex
	if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")], &idx); err != nil {
		t.Fatalf("index %s: %v", digest, err)
	}
	return builtImage{digest: digest, index: idx}
}
