package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testConfig builds the two small testdata programs for the default
// platforms, stamped as the Makefile stamps the daemons.
func testConfig() Config {
	return Config{
		Ref:      "localhost/isthmus:v9.8.7-test",
		Version:  "v9.8.7-test",
		Revision: "0123abcd",
		LDFlags:  "-X main.version=v9.8.7-test",
		Packages: []string{"isthmus.dev/deploy/image/testdata/hello", "isthmus.dev/deploy/image/testdata/greet"},
		Created:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

// TestBuildReproducible builds the image twice, into different places,
// and gets the same bytes, so the same digests.
func TestBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles for three platforms")
	}
	var sums [2][32]byte
	var results [2]Result
	for i := range sums {
		out := filepath.Join(t.TempDir(), "out", "image.tar")
		res, err := Build(t.Context(), testConfig(), out)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != res.Size {
			t.Errorf("Result.Size %d, file has %d bytes", res.Size, len(b))
		}
		sums[i], results[i] = sha256.Sum256(b), res
	}
	if sums[0] != sums[1] {
		t.Errorf("two builds of the same sources differ: sha256 %x and %x", sums[0], sums[1])
	}
	if results[0].Index.Digest != results[1].Index.Digest {
		t.Errorf("index digests differ: %s and %s", results[0].Index.Digest, results[1].Index.Digest)
	}
	t.Logf("reproducible:\n%s", results[0])
}

// TestBuildContents reads the tarball back with go-containerregistry's
// layout reader and checks every part of it.
func TestBuildContents(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles for three platforms")
	}
	c := testConfig()
	out := filepath.Join(t.TempDir(), "image.tar")
	res, err := Build(t.Context(), c, out)
	if err != nil {
		t.Fatal(err)
	}
	dir := untarLayout(t, out, c.Created)

	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Manifests) != 1 {
		t.Fatalf("index.json names %d entries, want the one image index", len(tm.Manifests))
	}
	d := tm.Manifests[0]
	if d.MediaType != types.OCIImageIndex || d.Annotations[AnnotationRefName] != c.Ref || d.Digest != res.Index.Digest {
		t.Errorf("index.json entry = %s %s %v, want %s %s with %s=%s", d.MediaType, d.Digest, d.Annotations,
			types.OCIImageIndex, res.Index.Digest, AnnotationRefName, c.Ref)
	}
	idx, err := top.ImageIndex(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	plats := DefaultPlatforms()
	if len(im.Manifests) != len(plats) {
		t.Fatalf("the index has %d manifests, want %d", len(im.Manifests), len(plats))
	}
	for i, m := range im.Manifests {
		if m.Platform == nil || !m.Platform.Equals(plats[i]) || m.MediaType != types.OCIManifestSchema1 || m.ArtifactType != "" {
			t.Errorf("manifest %d: platform %v media type %s artifact type %q, want %s %s and no artifact type",
				i, m.Platform, m.MediaType, m.ArtifactType, plats[i], types.OCIManifestSchema1)
			continue
		}
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(plats[i].String(), func(t *testing.T) { checkImage(t, c, plats[i], img) })
	}
}

func checkImage(t *testing.T, c Config, p v1.Platform, img v1.Image) {
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != p.OS || cf.Architecture != p.Architecture || cf.Variant != p.Variant {
		t.Errorf("config platform %s/%s/%s, want %s", cf.OS, cf.Architecture, cf.Variant, p)
	}
	if cf.RootFS.Type != "layers" || len(cf.RootFS.DiffIDs) != 1 {
		t.Errorf("config rootfs %+v, want type layers and one diff id", cf.RootFS)
	}
	if !cf.Created.Equal(c.Created) {
		t.Errorf("config created %v, want %v", cf.Created.Time, c.Created)
	}
	cc := cf.Config
	if cc.User != "65532:65532" || cc.WorkingDir != "/" || !slices.Equal(cc.Env, []string{"PATH=/"}) ||
		len(cc.Entrypoint) != 0 || len(cc.Cmd) != 0 || len(cc.ExposedPorts) != 0 || len(cc.Volumes) != 0 {
		t.Errorf("config %+v: want user 65532:65532, working dir /, env PATH=/, no entrypoint, cmd, ports or volumes", cc)
	}
	want := map[string]string{LabelVersion: c.Version, LabelRevision: c.Revision, LabelSource: DefaultSource, LabelTitle: Title}
	for k, v := range want {
		if cc.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, cc.Labels[k], v)
		}
	}
	mt, err := img.MediaType()
	if err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s (%v), want %s", mt, err, types.OCIManifestSchema1)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("config media type %s, want %s", m.Config.MediaType, types.OCIConfigJSON)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	lmt, _ := layers[0].MediaType()
	if lmt != types.OCILayer {
		t.Errorf("layer media type %s, want %s", lmt, types.OCILayer)
	}
	checkLayer(t, c, p, layers[0])
}

// checkLayer reads the layer: exactly the expected entries in order,
// root-owned with fixed modes and times, the account files, and binaries
// built for p as the Makefile builds them.
func checkLayer(t *testing.T, c Config, p v1.Platform, l v1.Layer) {
	hdrs, files := readLayer(t, l)
	var names []string
	for _, h := range hdrs {
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(c.Created) {
			t.Errorf("%s: owner %d:%d time %v, want 0:0 %v", h.Name, h.Uid, h.Gid, h.ModTime, c.Created)
		}
		wantMode := map[string]int64{"etc/": 0o755, "etc/passwd": 0o644, "etc/group": 0o644}[h.Name]
		if wantMode == 0 {
			wantMode = 0o755
		}
		if h.Mode != wantMode {
			t.Errorf("%s: mode %o, want %o", h.Name, h.Mode, wantMode)
		}
	}
	if want := []string{"etc/", "etc/group", "etc/passwd", "greet", "hello"}; !slices.Equal(names, want) {
		t.Errorf("layer entries %q, want %q", names, want)
	}
	if !strings.Contains(string(files["etc/passwd"]), "nonroot:x:65532:65532:") ||
		!strings.Contains(string(files["etc/group"]), "nonroot:x:65532:") {
		t.Errorf("account files do not name 65532:\n%s\n%s", files["etc/passwd"], files["etc/group"])
	}
	dir := t.TempDir()
	for _, name := range []string{"hello", "greet"} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, files[name], 0o755); err != nil {
			t.Fatal(err)
		}
		checkBinary(t, c, p, path)
	}
	if p.Architecture == runtime.GOARCH {
		out, err := exec.CommandContext(t.Context(), filepath.Join(dir, "hello")).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(out), "hello "+c.Version+" linux/"+runtime.GOARCH) {
			t.Errorf("the image's hello says %q, want the stamped version %s", out, c.Version)
		}
	}
}

// readLayer returns the layer's tar headers in order and its regular
// files' contents, checking that gzip recorded no name and no time.
func readLayer(t *testing.T, l v1.Layer) ([]*tar.Header, map[string][]byte) {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("gzip header carries name %q time %v, want none", zr.Name, zr.ModTime)
	}
	tr := tar.NewReader(zr)
	var hdrs []*tar.Header
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, files
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, h)
		if h.Typeflag == tar.TypeReg {
			if files[h.Name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// checkBinary reads the build settings Go recorded in the binary.
func checkBinary(t *testing.T, c Config, p v1.Platform, path string) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	got := map[string]string{}
	for _, s := range bi.Settings {
		got[s.Key] = s.Value
	}
	want := map[string]string{"GOOS": "linux", "GOARCH": p.Architecture, "CGO_ENABLED": "0", "-trimpath": "true"}
	if p.Architecture == "arm" {
		want["GOARM"] = strings.TrimPrefix(p.Variant, "v")
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s for %s: build setting %s=%q, want %q (all: %v)", filepath.Base(path), p, k, got[k], v, got)
		}
	}
	// -trimpath keeps -ldflags out of the build settings; the stamped
	// string is in the binary (and the host's binary is run, above).
	if b, err := os.ReadFile(path); err != nil || !bytes.Contains(b, []byte(c.Version)) {
		t.Errorf("%s for %s: the stamped version %q is not in the binary (%v)", filepath.Base(path), p, c.Version, err)
	}
}

// untarLayout unpacks the OCI layout tarball into a new directory,
// checking on the way that its entries are sorted, root-owned and carry
// the fixed time.
func untarLayout(t *testing.T, tarball string, mtime time.Time) string {
	t.Helper()
	f, err := os.Open(tarball)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(mtime) {
			t.Errorf("%s: owner %d:%d time %v, want 0:0 %v", h.Name, h.Uid, h.Gid, h.ModTime, mtime)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, tr); err != nil {
			t.Fatal(err)
		}
		if blob, ok := strings.CutPrefix(h.Name, "blobs/sha256/"); ok {
			if sum := sha256.Sum256(buf.Bytes()); hex.EncodeToString(sum[:]) != blob {
				t.Errorf("%s holds content with sha256 %x", h.Name, sum)
			}
		}
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("tarball entries not sorted: %q", names)
	}
	for _, want := range []string{"oci-layout", "index.json", "blobs/", "blobs/sha256/"} {
		if !slices.Contains(names, want) {
			t.Errorf("tarball has no %s: %q", want, names)
		}
	}
	return dir
}

// TestBuildFailures: a package that does not build, or is not a program,
// fails the build with the platform and the package named, and leaves no
// output and no work files behind.
func TestBuildFailures(t *testing.T) {
	for _, tc := range []struct {
		pkgs []string
		want string
	}{
		{[]string{"isthmus.dev/deploy/image/testdata/nosuch"}, "go build for linux/amd64"},
		{[]string{"isthmus.dev/deploy/image"}, "no main packages"},
		{[]string{"isthmus.dev/deploy/image/testdata/hello", "isthmus.dev/deploy/image"}, "wrote no image (is isthmus.dev/deploy/image a main package?)"},
	} {
		c := testConfig()
		c.Packages = tc.pkgs
		dir := t.TempDir()
		_, err := Build(t.Context(), c, filepath.Join(dir, "image.tar"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Build(%s) = %v, want an error containing %q", tc.pkgs, err, tc.want)
		}
		if left, _ := os.ReadDir(dir); len(left) != 0 {
			t.Errorf("Build(%s) failed and left %v", tc.pkgs, left)
		}
	}
}
