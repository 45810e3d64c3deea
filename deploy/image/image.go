package image

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The OCI annotation and label keys the image carries.
const (
	AnnotationRefName = "org.opencontainers.image.ref.name"
	LabelVersion      = "org.opencontainers.image.version"
	LabelRevision     = "org.opencontainers.image.revision"
	LabelSource       = "org.opencontainers.image.source"
	LabelTitle        = "org.opencontainers.image.title"
	LabelDescription  = "org.opencontainers.image.description"
)

// Labels are the OCI labels of every platform's image.
func (c Config) Labels() map[string]string {
	c = c.withDefaults()
	return map[string]string{
		LabelVersion:     c.Version,
		LabelRevision:    c.Revision,
		LabelSource:      c.Source,
		LabelTitle:       Title,
		LabelDescription: "proxy-server, proxy-agent and isthmus: a drop-in replacement for Konnectivity",
	}
}

// platformImage builds the image of one platform from its binaries. The
// layer is written to layerPath (a gzipped tar, see writeLayer) and read
// from there while the image is written out.
func platformImage(c Config, p v1.Platform, bins []Binary, layerPath string) (v1.Image, error) {
	c = c.withDefaults()
	f, err := os.Create(layerPath)
	if err != nil {
		return nil, err
	}
	if err := writeLayer(f, bins, c.Created); err != nil {
		f.Close()
		return nil, fmt.Errorf("layer for %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromFile(layerPath, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer for %s: %w", p, err)
	}

	names := make([]string, len(bins))
	for i, b := range bins {
		names[i] = "/" + b.Name
	}
	cfg := &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Variant:      p.Variant,
		Created:      v1.Time{Time: c.Created},
		RootFS:       v1.RootFS{Type: "layers"}, // mutate.Append adds the diff ids
		Config: v1.Config{
			User:       strconv.Itoa(UID) + ":" + strconv.Itoa(GID),
			Env:        []string{"PATH=/"},
			WorkingDir: "/",
			Labels:     c.Labels(),
		},
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: c.Created},
			CreatedBy: "isthmus-image: " + strings.Join(names, " ") + " (static, CGO_ENABLED=0), /etc/passwd, /etc/group",
			Comment:   "version " + c.Version + ", commit " + c.Revision,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image for %s: %w", p, err)
	}
	return img, nil
}

// index puts the images, one per platform in c.Platforms' order, in one
// OCI image index.
func index(c Config, imgs []v1.Image) (v1.ImageIndex, error) {
	c = c.withDefaults()
	if len(imgs) != len(c.Platforms) {
		return nil, fmt.Errorf("%d images for %d platforms", len(imgs), len(c.Platforms))
	}
	adds := make([]mutate.IndexAddendum, len(imgs))
	for i, img := range imgs {
		p := c.Platforms[i]
		adds[i] = mutate.IndexAddendum{Add: notArtifact{img}, Descriptor: v1.Descriptor{Platform: &p}}
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx, adds...), nil
}

// notArtifact is an image whose index descriptor carries no artifactType:
// go-containerregistry otherwise sets it to the config's media type, and
// the OCI image spec reserves artifactType for artifacts, not images.
type notArtifact struct{ v1.Image }

func (notArtifact) ArtifactType() (string, error) { return "", nil }
