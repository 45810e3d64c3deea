package cni

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// File is one manifest file of a stack: its objects, in order, as YAML
// documents.
type File struct {
	Name    string
	Objects []runtime.Object
}

// Stack is one manifest folder: a set of files applied together.
type Stack struct {
	Name  string
	Files []File
}

// Stacks renders the provider's Kubernetes manifests (defaults filled);
// c must be valid.
// Provider custom has none (ErrCustomProvider).
func (c *Config) Stacks() ([]Stack, error) {
	d := c.withDefaults()
	c = &d
	switch c.Provider {
	case KubeRouter:
		files, err := c.kubeRouterStack()
		if err != nil {
			return nil, err
		}
		return []Stack{{Name: StackKubeRouter, Files: files}}, nil
	case Calico:
		files, err := c.calicoStack()
		if err != nil {
			return nil, err
		}
		return []Stack{{Name: StackCalicoCRDs, Files: calicoCRDStack()}, {Name: StackCalico, Files: files}}, nil
	case Custom:
		return nil, ErrCustomProvider
	}
	return nil, fmt.Errorf("provider %q: allowed: %s", c.Provider, joinProviders())
}

// Encode renders f as YAML documents separated by "---", without the
// empty creationTimestamp and status fields the typed objects carry, and
// checks that the result decodes strictly (DecodeStrict).
func (f File) Encode() ([]byte, error) {
	var buf bytes.Buffer
	for i, obj := range f.Objects {
		doc, err := encodeObject(obj)
		if err != nil {
			return nil, fmt.Errorf("%s: object %d: %w", f.Name, i, err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(doc)
	}
	if _, err := DecodeStrict(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("%s: rendered manifest does not decode strictly: %w", f.Name, err)
	}
	return buf.Bytes(), nil
}

func encodeObject(obj runtime.Object) ([]byte, error) {
	raw, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	prune(m)
	if s, ok := m["status"].(map[string]any); ok && len(s) == 0 {
		delete(m, "status")
	}
	return yaml.Marshal(m)
}

// prune removes the "creationTimestamp: null" of every ObjectMeta (top
// level and pod templates) and the empty "resources: {}" of containers:
// noise in a manifest.
func prune(v any) {
	switch t := v.(type) {
	case map[string]any:
		if ts, ok := t["creationTimestamp"]; ok && ts == nil {
			delete(t, "creationTimestamp")
		}
		if r, ok := t["resources"].(map[string]any); ok && len(r) == 0 {
			delete(t, "resources")
		}
		for _, child := range t {
			prune(child)
		}
	case []any:
		for _, child := range t {
			prune(child)
		}
	}
}

// strictDecoder decodes the built-in kinds of client-go's scheme and
// apiextensions v1 CRDs, failing on unknown or duplicate fields.
var strictDecoder = func() runtime.Decoder {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// DecodeStrict decodes every YAML document of data with client-go's
// scheme (and apiextensions v1 for CRDs), strictly: an unknown kind, an
// unknown field or a duplicate field is an error.
func DecodeStrict(data []byte) ([]runtime.Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []runtime.Object
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, gvk, err := strictDecoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if gvk.Kind == "" || gvk.Version == "" {
			return nil, fmt.Errorf("document %d: no apiVersion or kind", i)
		}
		objs = append(objs, obj)
	}
	if len(objs) == 0 {
		return nil, errors.New("no objects")
	}
	return objs, nil
}
