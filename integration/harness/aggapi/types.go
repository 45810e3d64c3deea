package aggapi

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	genericrequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/validation/spec"
)

// Ping is the one kind the server serves: an answer that says which request
// it was (Served, the server's count) and whom kube-apiserver's aggregator
// said the request came from (User), so that a test can tell its request
// went all the way and carried its identity.
type Ping struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Served is the sequence number of the answer (1 for the first).
	Served int64 `json:"served"`
	// User is the name of the user the request was authenticated as.
	User string `json:"user"`
}

// PingList is what a LIST of pings answers.
type PingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []Ping `json:"items"`
}

// The types name their OpenAPI models themselves (as generated API types
// do), so that the scheme, the OpenAPI builder and our definitions agree
// without code generation.
const (
	pingModel     = "dev.isthmus.stand.v1.Ping"
	pingListModel = "dev.isthmus.stand.v1.PingList"
)

// OpenAPIModelName is the name of Ping's OpenAPI definition.
func (Ping) OpenAPIModelName() string { return pingModel }

// OpenAPIModelName is the name of PingList's OpenAPI definition.
func (PingList) OpenAPIModelName() string { return pingListModel }

// DeepCopyObject is written by hand: the fields are values but for the
// metadata, which copies itself.
func (p *Ping) DeepCopyObject() runtime.Object {
	if p == nil {
		return nil
	}
	out := *p
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return &out
}

// DeepCopyObject copies the list and every item.
func (l *PingList) DeepCopyObject() runtime.Object {
	if l == nil {
		return nil
	}
	out := *l
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]Ping, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopyObject().(*Ping)
		}
	}
	return &out
}

// newScheme registers the types, and the meta types every group serves (its
// options, Status for errors, the discovery documents), as an aggregated
// server built on k8s.io/apiserver needs them.
func newScheme() (*runtime.Scheme, error) {
	gv := schema.GroupVersion{Group: Group, Version: Version}
	s := runtime.NewScheme()
	s.AddKnownTypes(gv, &Ping{}, &PingList{})
	metav1.AddToGroupVersion(s, gv)
	// The generic server decodes some options as core v1 ones.
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	s.AddUnversionedTypes(schema.GroupVersion{Version: "v1"},
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
	if err := s.SetVersionPriority(gv); err != nil {
		return nil, err
	}
	return s, nil
}

// openAPIDefinitions are Ping's and PingList's definitions, written by hand;
// the meta types they refer to come from metaDefinitions.
func openAPIDefinitions(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
	str := spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"string"}}}
	meta := func(model string) spec.Schema {
		return spec.Schema{SchemaProps: spec.SchemaProps{Default: map[string]any{}, Ref: ref(model)}}
	}
	objectMeta, listMeta := metav1.ObjectMeta{}.OpenAPIModelName(), metav1.ListMeta{}.OpenAPIModelName()
	return map[string]common.OpenAPIDefinition{
		pingModel: {
			Schema: spec.Schema{SchemaProps: spec.SchemaProps{
				Description: "Ping is the answer of the stand's aggregated API server.",
				Type:        []string{"object"},
				Properties: map[string]spec.Schema{
					"apiVersion": str,
					"kind":       str,
					"metadata":   meta(objectMeta),
					"served":     {SchemaProps: spec.SchemaProps{Type: []string{"integer"}, Format: "int64"}},
					"user":       str,
				},
			}},
			Dependencies: []string{objectMeta},
		},
		pingListModel: {
			Schema: spec.Schema{SchemaProps: spec.SchemaProps{
				Description: "PingList is a list of pings.",
				Type:        []string{"object"},
				Properties: map[string]spec.Schema{
					"apiVersion": str,
					"kind":       str,
					"metadata":   meta(listMeta),
					"items": {SchemaProps: spec.SchemaProps{
						Type:  []string{"array"},
						Items: &spec.SchemaOrArray{Schema: &spec.Schema{SchemaProps: spec.SchemaProps{Ref: ref(pingModel)}}},
					}},
				},
				Required: []string{"items"},
			}},
			Dependencies: []string{pingModel, listMeta},
		},
	}
}

// pingStorage answers GET and LIST of pings from nothing: every name
// exists. It counts its answers.
type pingStorage struct {
	rest.TableConvertor
	served  atomic.Int64
	created metav1.Time
}

var (
	_ rest.Getter               = (*pingStorage)(nil)
	_ rest.Lister               = (*pingStorage)(nil)
	_ rest.Scoper               = (*pingStorage)(nil)
	_ rest.SingularNameProvider = (*pingStorage)(nil)
)

func newPingStorage() *pingStorage {
	return &pingStorage{
		TableConvertor: rest.NewDefaultTableConvertor(schema.GroupResource{Group: Group, Resource: Resource}),
		created:        metav1.NewTime(time.Now().Truncate(time.Second)),
	}
}

func (*pingStorage) New() runtime.Object     { return &Ping{} }
func (*pingStorage) NewList() runtime.Object { return &PingList{} }
func (*pingStorage) Destroy()                {}
func (*pingStorage) NamespaceScoped() bool   { return false }
func (*pingStorage) GetSingularName() string { return "ping" }
func (*pingStorage) Kind() string            { return "Ping" }

// ping is answer number n, named name, for the user of ctx.
func (s *pingStorage) ping(ctx context.Context, name string, n int64) Ping {
	var who string
	if u, ok := genericrequest.UserFrom(ctx); ok {
		who = u.GetName()
	}
	return Ping{
		TypeMeta:   metav1.TypeMeta{APIVersion: Group + "/" + Version, Kind: "Ping"},
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: s.created},
		Served:     n,
		User:       who,
	}
}

// Get answers a Ping of the name asked.
func (s *pingStorage) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	p := s.ping(ctx, name, s.served.Add(1))
	return &p, nil
}

// List answers two pings, whatever the options.
func (s *pingStorage) List(ctx context.Context, _ *metainternalversion.ListOptions) (runtime.Object, error) {
	n := s.served.Add(1)
	return &PingList{
		TypeMeta: metav1.TypeMeta{APIVersion: Group + "/" + Version, Kind: "PingList"},
		ListMeta: metav1.ListMeta{ResourceVersion: strconv.FormatInt(n, 10)},
		Items:    []Ping{s.ping(ctx, "first", n), s.ping(ctx, "second", n)},
	}, nil
}
