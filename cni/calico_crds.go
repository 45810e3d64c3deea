package cni

import (
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// CalicoGroup is the API group of Calico's CRDs.
const CalicoGroup = "crd.projectcalico.org"

// PolicyGroup is the API group of Kubernetes' AdminNetworkPolicy API
// (sigs.k8s.io/network-policy-api): Calico's Felix enforces its
// AdminNetworkPolicies and BaselineAdminNetworkPolicies, and Calico's own
// manifest installs their CRDs.
const PolicyGroup = "policy.networking.k8s.io"

// calicoKind is one custom resource kind of the Calico stack.
type calicoKind struct {
	Kind       string
	Plural     string
	Namespaced bool
	// Group is CalicoGroup (version v1) when empty, or PolicyGroup
	// (version v1alpha1).
	Group     string
	ShortName string
}

// calicoKinds are the custom resources of Calico's Kubernetes datastore
// and the AdminNetworkPolicy API, as Calico v3.31.0's manifests/calico.yaml
// lists them: calico-node, calico-ipam and kube-controllers read or write
// every one of them (see the RBAC in calico.go; a test checks the two
// agree).
var calicoKinds = []calicoKind{
	{Kind: "BGPConfiguration", Plural: "bgpconfigurations"},
	{Kind: "BGPFilter", Plural: "bgpfilters"},
	{Kind: "BGPPeer", Plural: "bgppeers"},
	{Kind: "BlockAffinity", Plural: "blockaffinities"},
	{Kind: "CalicoNodeStatus", Plural: "caliconodestatuses"},
	{Kind: "ClusterInformation", Plural: "clusterinformations"},
	{Kind: "FelixConfiguration", Plural: "felixconfigurations"},
	{Kind: "GlobalNetworkPolicy", Plural: "globalnetworkpolicies"},
	{Kind: "GlobalNetworkSet", Plural: "globalnetworksets"},
	{Kind: "HostEndpoint", Plural: "hostendpoints"},
	{Kind: "IPAMBlock", Plural: "ipamblocks"},
	{Kind: "IPAMConfig", Plural: "ipamconfigs"},
	{Kind: "IPAMHandle", Plural: "ipamhandles"},
	{Kind: "IPPool", Plural: "ippools"},
	{Kind: "IPReservation", Plural: "ipreservations"},
	{Kind: "KubeControllersConfiguration", Plural: "kubecontrollersconfigurations"},
	{Kind: "NetworkPolicy", Plural: "networkpolicies", Namespaced: true},
	{Kind: "NetworkSet", Plural: "networksets", Namespaced: true},
	{Kind: "StagedGlobalNetworkPolicy", Plural: "stagedglobalnetworkpolicies"},
	{Kind: "StagedKubernetesNetworkPolicy", Plural: "stagedkubernetesnetworkpolicies", Namespaced: true},
	{Kind: "StagedNetworkPolicy", Plural: "stagednetworkpolicies", Namespaced: true},
	{Kind: "Tier", Plural: "tiers"},
	{Kind: "AdminNetworkPolicy", Plural: "adminnetworkpolicies", Group: PolicyGroup, ShortName: "anp"},
	{Kind: "BaselineAdminNetworkPolicy", Plural: "baselineadminnetworkpolicies", Group: PolicyGroup, ShortName: "banp"},
}

func (k calicoKind) group() string {
	if k.Group == "" {
		return CalicoGroup
	}
	return k.Group
}

// calicoPlurals are the plurals of the kinds of API group group.
func calicoPlurals(group string) []string {
	var out []string
	for _, k := range calicoKinds {
		if k.group() == group {
			out = append(out, k.Plural)
		}
	}
	return out
}

// crd is the apiextensions v1 CRD of one kind, served and stored. A
// Calico kind is version v1 with a structural schema whose spec and
// status keep unknown fields (Calico validates its resources itself); an
// AdminNetworkPolicy kind is version v1alpha1, as network-policy-api
// v0.1.1 (the bundle Calico v3.31.0 ships) defines it, see adminPolicy.
func (k calicoKind) crd() *apiextensionsv1.CustomResourceDefinition {
	scope := apiextensionsv1.ClusterScoped
	if k.Namespaced {
		scope = apiextensionsv1.NamespaceScoped
	}
	version := apiextensionsv1.CustomResourceDefinitionVersion{Name: "v1", Served: true, Storage: true}
	var annotations map[string]string
	if k.group() == PolicyGroup {
		version, annotations = k.adminPolicy()
	} else {
		version.Schema = &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
			Type: "object",
			Properties: map[string]apiextensionsv1.JSONSchemaProps{
				"apiVersion": {Type: "string"},
				"kind":       {Type: "string"},
				"metadata":   {Type: "object"},
				"spec":       openObject(),
				"status":     openObject(),
			},
		}}
	}
	var shortNames []string
	if k.ShortName != "" {
		shortNames = []string{k.ShortName}
	}
	crd := &apiextensionsv1.CustomResourceDefinition{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"},
		ObjectMeta: meta(k.Plural+"."+k.group(), "", nil),
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: k.group(),
			Names: apiextensionsv1.CustomResourceDefinitionNames{
				Kind:       k.Kind,
				ListKind:   k.Kind + "List",
				Plural:     k.Plural,
				Singular:   strings.ToLower(k.Kind),
				ShortNames: shortNames,
			},
			Scope:    scope,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{version},
		},
	}
	crd.Annotations = annotations
	return crd
}

// openObject is an object that keeps whatever fields it is given.
func openObject() apiextensionsv1.JSONSchemaProps {
	keep := true
	return apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: &keep}
}

// adminPolicy is the v1alpha1 version of an AdminNetworkPolicy or
// BaselineAdminNetworkPolicy CRD, and the CRD's annotations: a group under
// k8s.io needs the API-review annotation, or kube-apiserver refuses the
// CRD. The schema holds the shape network-policy-api v0.1.1 requires (the
// required fields, the priority range, one subject, at most 100 rules;
// a BaselineAdminNetworkPolicy is a singleton named "default"); the
// subject and the rules keep their fields unchecked.
func (k calicoKind) adminPolicy() (apiextensionsv1.CustomResourceDefinitionVersion, map[string]string) {
	hundred, one := int64(100), int64(1)
	rules := func(peers string) apiextensionsv1.JSONSchemaProps {
		item := openObject()
		item.Required = []string{"action", peers}
		return apiextensionsv1.JSONSchemaProps{Type: "array", MaxItems: &hundred,
			Items: &apiextensionsv1.JSONSchemaPropsOrArray{Schema: &item}}
	}
	spec := apiextensionsv1.JSONSchemaProps{
		Type:     "object",
		Required: []string{"subject"},
		Properties: map[string]apiextensionsv1.JSONSchemaProps{
			"subject": {Type: "object", MinProperties: &one, MaxProperties: &one, Properties: map[string]apiextensionsv1.JSONSchemaProps{
				"namespaces": openObject(),
				"pods":       openObject(),
			}},
			"ingress": rules("from"),
			"egress":  rules("to"),
		},
	}
	schema := &apiextensionsv1.JSONSchemaProps{
		Type:     "object",
		Required: []string{"metadata", "spec"},
		Properties: map[string]apiextensionsv1.JSONSchemaProps{
			"apiVersion": {Type: "string"},
			"kind":       {Type: "string"},
			"metadata":   {Type: "object"},
			"status":     openObject(),
		},
	}
	columns := []apiextensionsv1.CustomResourceColumnDefinition{{Name: "Age", Type: "date", JSONPath: ".metadata.creationTimestamp"}}
	if k.Kind == "AdminNetworkPolicy" {
		lowest, highest := 0.0, 1000.0
		spec.Required = []string{"priority", "subject"}
		spec.Properties["priority"] = apiextensionsv1.JSONSchemaProps{Type: "integer", Format: "int32", Minimum: &lowest, Maximum: &highest}
		columns = append([]apiextensionsv1.CustomResourceColumnDefinition{{Name: "Priority", Type: "integer", JSONPath: ".spec.priority"}}, columns...)
	} else {
		schema.XValidations = apiextensionsv1.ValidationRules{{
			Rule:    "self.metadata.name == 'default'",
			Message: `Only one baseline admin network policy with metadata.name="default" can be created in the cluster`,
		}}
	}
	schema.Properties["spec"] = spec
	version := apiextensionsv1.CustomResourceDefinitionVersion{
		Name:                     "v1alpha1",
		Served:                   true,
		Storage:                  true,
		Schema:                   &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: schema},
		Subresources:             &apiextensionsv1.CustomResourceSubresources{Status: &apiextensionsv1.CustomResourceSubresourceStatus{}},
		AdditionalPrinterColumns: columns,
	}
	return version, map[string]string{"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/network-policy-api/pull/30"}
}

// calicoCRDStack is one file per CRD.
func calicoCRDStack() []File {
	files := make([]File, 0, len(calicoKinds))
	for _, k := range calicoKinds {
		files = append(files, File{Name: "crd-" + k.Plural + ".yaml", Objects: []runtime.Object{k.crd()}})
	}
	return files
}
