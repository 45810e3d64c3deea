package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Result describes a written image tarball.
type Result struct {
	Ref       string
	Index     v1.Descriptor   // the image index that index.json names
	Manifests []v1.Descriptor // one per platform, each with its Platform
	Path      string          // the tarball
	Size      int64           // its size in bytes
}

// String is what `make image` prints: the ref, the index digest and one
// line per platform.
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%d bytes)\nref:   %s\nindex: %s\n", r.Path, r.Size, r.Ref, r.Index.Digest)
	for _, m := range r.Manifests {
		fmt.Fprintf(&b, "  %-14s %s\n", m.Platform.String(), m.Digest)
	}
	return b.String()
}

// Build compiles c.Packages for every platform, assembles the image index
// and writes it as an OCI image layout tarball to out, replacing out
// atomically. Work files go to a temporary directory next to out, removed
// at the end.
func Build(ctx context.Context, c Config, out string) (Result, error) {
	if err := c.Validate(); err != nil {
		return Result{}, fmt.Errorf("image config: %w", err)
	}
	c = c.withDefaults()
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return Result{}, err
	}
	work, err := os.MkdirTemp(filepath.Dir(out), ".isthmus-image-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(work)

	start := time.Now()
	imgs := make([]v1.Image, 0, len(c.Platforms))
	for i, p := range c.Platforms {
		binDir := filepath.Join(work, fmt.Sprintf("bin-%d", i))
		if err := os.Mkdir(binDir, 0o755); err != nil {
			return Result{}, err
		}
		bins, err := Compile(ctx, c, p, binDir)
		if err != nil {
			return Result{}, err
		}
		img, err := platformImage(c, p, bins, filepath.Join(work, fmt.Sprintf("layer-%d.tar.gz", i)))
		if err != nil {
			return Result{}, err
		}
		imgs = append(imgs, img)
	}
	idx, err := index(c, imgs)
	if err != nil {
		return Result{}, err
	}
	if err := writeLayout(filepath.Join(work, "layout"), idx, c.Ref); err != nil {
		return Result{}, err
	}
	if err := writeTarball(filepath.Join(work, "layout"), out, c.Created); err != nil {
		return Result{}, err
	}
	res, err := describe(idx, c.Ref, out)
	if err != nil {
		return Result{}, err
	}
	c.Log.Info("wrote image", "path", out, "ref", c.Ref, "index", res.Index.Digest.String(), "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// writeTarball tars the layout dir into out through a temporary file,
// renamed over out once complete.
func writeTarball(dir, out string, mtime time.Time) error {
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := tarDir(tmp, dir, mtime); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return nil
}

func describe(idx v1.ImageIndex, ref, out string) (Result, error) {
	res := Result{Ref: ref, Path: out}
	digest, err := idx.Digest()
	if err != nil {
		return Result{}, err
	}
	size, err := idx.Size()
	if err != nil {
		return Result{}, err
	}
	mt, err := idx.MediaType()
	if err != nil {
		return Result{}, err
	}
	res.Index = v1.Descriptor{MediaType: mt, Digest: digest, Size: size,
		Annotations: map[string]string{AnnotationRefName: ref}}
	im, err := idx.IndexManifest()
	if err != nil {
		return Result{}, err
	}
	res.Manifests = im.Manifests
	fi, err := os.Stat(out)
	if err != nil {
		return Result{}, err
	}
	res.Size = fi.Size()
	return res, nil
}
