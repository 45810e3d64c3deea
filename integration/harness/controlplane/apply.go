package controlplane

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"isthmus.dev/integration/harness"
)

// ApplyOpts tune Apply.
type ApplyOpts struct {
	// FieldManager of the server-side apply; "" is "isthmus-e2e".
	FieldManager string
	// DryRun says which objects are only validated and defaulted by the
	// API server, not stored (a workload nothing would run); nil: none.
	DryRun func(*unstructured.Unstructured) bool
}

// Apply server-side applies objs in order, as `kubectl apply
// --server-side` of a folder would; after a run of CRDs, before the next
// object, it waits until each is established and learns their kinds.
func (cp *ControlPlane) Apply(t testing.TB, objs []*unstructured.Unstructured, o ApplyOpts) {
	t.Helper()
	if o.FieldManager == "" {
		o.FieldManager = "isthmus-e2e"
	}
	dc, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	var crds []string
	for _, u := range objs {
		gvk := u.GroupVersionKind()
		if gvk.Kind == "CustomResourceDefinition" {
			crds = append(crds, u.GetName())
		} else if len(crds) > 0 {
			waitEstablished(t, dc, crds)
			crds = nil
			mapper.Reset()
		}
		m, err := mapper.RESTMapping(schema.GroupKind{Group: gvk.Group, Kind: gvk.Kind}, gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk, u.GetName(), err)
		}
		var ri dynamic.ResourceInterface = dc.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dc.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		ao := metav1.ApplyOptions{FieldManager: o.FieldManager, Force: true}
		if o.DryRun != nil && o.DryRun(u) {
			ao.DryRun = []string{metav1.DryRunAll}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err = ri.Apply(ctx, u.GetName(), u, ao)
		cancel()
		if err != nil {
			t.Fatalf("server-side apply of %s %s/%s (dry run: %v): %v", gvk.Kind, u.GetNamespace(), u.GetName(), ao.DryRun != nil, err)
		}
	}
	if len(crds) > 0 {
		waitEstablished(t, dc, crds)
	}
}

func waitEstablished(t testing.TB, dc dynamic.Interface, names []string) {
	t.Helper()
	res := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, name := range names {
		harness.WaitFor(t, time.Minute, "CRD "+name+" established", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			u, err := dc.Resource(res).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true
				}
			}
			return false
		})
	}
}
