package cni

import (
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// CalicoGroup is the API group of Calico's CRDs.
const CalicoGroup = "crd.projectcalico.org"

// calicoKind is one Calico custom resource kind.
type calicoKind struct {
	Kind       string
	Plural     string
	Namespaced bool
}

// calicoKinds are the custom resources of Calico's Kubernetes datastore:
// calico-node, calico-ipam and kube-controllers read or write every one of
// them (see the RBAC in calico.go; a test checks the two agree).
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
}

// crd is the apiextensions v1 CRD of one Calico kind: version v1, served
// and stored, with a structural schema whose spec and status keep unknown
// fields (Calico validates its resources itself).
func (k calicoKind) crd() *apiextensionsv1.CustomResourceDefinition {
	scope := apiextensionsv1.ClusterScoped
	if k.Namespaced {
		scope = apiextensionsv1.NamespaceScoped
	}
	keep := true
	open := apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: &keep}
	schema := &apiextensionsv1.JSONSchemaProps{
		Type: "object",
		Properties: map[string]apiextensionsv1.JSONSchemaProps{
			"apiVersion": {Type: "string"},
			"kind":       {Type: "string"},
			"metadata":   {Type: "object"},
			"spec":       open,
			"status":     open,
		},
	}
	return &apiextensionsv1.CustomResourceDefinition{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"},
		ObjectMeta: meta(k.Plural+"."+CalicoGroup, "", nil),
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: CalicoGroup,
			Names: apiextensionsv1.CustomResourceDefinitionNames{
				Kind:     k.Kind,
				ListKind: k.Kind + "List",
				Plural:   k.Plural,
				Singular: strings.ToLower(k.Kind),
			},
			Scope: scope,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name:    "v1",
				Served:  true,
				Storage: true,
				Schema:  &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: schema},
			}},
		},
	}
}

// calicoCRDStack is one file per CRD.
func calicoCRDStack() []File {
	files := make([]File, 0, len(calicoKinds))
	for _, k := range calicoKinds {
		files = append(files, File{Name: "crd-" + k.Plural + ".yaml", Objects: []runtime.Object{k.crd()}})
	}
	return files
}
