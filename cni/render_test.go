package cni_test

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	crvalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"

	"isthmus.dev/cni"
)

func mustParse(t *testing.T, y string) cni.Config {
	t.Helper()
	c, err := cni.Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// readStack decodes, strictly, every file of a rendered stack folder.
func readStack(t *testing.T, dir string) map[string][]runtime.Object {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]runtime.Object{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := cni.DecodeStrict(data)
		if err != nil {
			t.Fatalf("%s does not decode strictly: %v", e.Name(), err)
		}
		out[e.Name()] = objs
	}
	return out
}

func kinds(objs map[string][]runtime.Object) []string {
	var k []string
	for _, list := range objs {
		for _, o := range list {
			k = append(k, o.GetObjectKind().GroupVersionKind().Kind)
		}
	}
	sort.Strings(k)
	return k
}

func find[T runtime.Object](objs map[string][]runtime.Object) []T {
	var out []T
	for _, list := range objs {
		for _, o := range list {
			if v, ok := o.(T); ok {
				out = append(out, v)
			}
		}
	}
	return out
}

func envOf(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		m[e.Name] = e.Value
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			m[e.Name] = "configmap:" + e.ValueFrom.ConfigMapKeyRef.Key
		}
	}
	return m
}

func TestDecodeStrictRefusesUnknownFields(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\nbogus: 1\n",
		"nested field":  "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec: {selectr: {}}\n",
		"unknown kind":  "apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n",
		"duplicate":     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\nmetadata: {name: y}\n",
		"empty":         "---\n",
	} {
		if _, err := cni.DecodeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	if objs, err := cni.DecodeStrict([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa}\n")); err != nil || len(objs) != 2 {
		t.Errorf("two good documents: %d objects, %v", len(objs), err)
	}
}

func TestRenderKubeRouter(t *testing.T) {
	out := t.TempDir()
	c := mustParse(t, "kuberouter: {hairpin: true, autoMTU: false, mtu: 1400, extraArgs: {bgp-holdtime: 30s}}")
	r, err := cni.Render(c, out, cni.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Conflist != filepath.Join(out, "cni", "10-kuberouter.conflist") || len(r.Stacks) != 1 || r.Stacks[0] != filepath.Join(out, "manifests", "kuberouter") {
		t.Fatalf("rendered %+v", r)
	}
	list, err := libcni.ConfListFromFile(r.Conflist)
	if err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.0.0" || len(list.Plugins) != 2 || list.Plugins[0].Network.Type != "bridge" || list.Plugins[1].Network.Type != "portmap" {
		t.Errorf("conflist: version %s, plugins %+v", list.CNIVersion, list.Plugins)
	}
	var br map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &br); err != nil {
		t.Fatal(err)
	}
	if br["hairpinMode"] != true || br["mtu"] != 1400.0 || br["bridge"] != "kube-bridge" {
		t.Errorf("bridge plugin: %v", br)
	}
	if ipam := br["ipam"].(map[string]any); ipam["type"] != "host-local" || ipam["ranges"] != nil {
		t.Errorf("template conflist: ipam %v, want host-local without a subnet (kube-router fills it)", ipam)
	}

	objs := readStack(t, r.Stacks[0])
	want := []string{"ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"}
	if got := kinds(objs); !slices.Equal(got, want) {
		t.Errorf("kinds %v, want %v", got, want)
	}
	ds := find[*appsv1.DaemonSet](objs)[0]
	args := ds.Spec.Template.Spec.Containers[0].Args
	for _, a := range []string{"--hairpin-mode=true", "--auto-mtu=false", "--enable-ipv6=false", "--bgp-holdtime=30s", "--enable-cni=true"} {
		if !slices.Contains(args, a) {
			t.Errorf("kube-router args %v lack %s", args, a)
		}
	}
	// kube-router dropped --cluster-cidr in 2020 (v1.1): a flag it does not
	// know stops it at start (integration/podnet runs the rendered args).
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--cluster-cidr") }) {
		t.Errorf("kube-router args %v carry --cluster-cidr, which kube-router v2 refuses", args)
	}
	if !ds.Spec.Template.Spec.HostNetwork || ds.Namespace != "kube-system" || ds.Spec.Template.Spec.ServiceAccountName != "kube-router" {
		t.Errorf("daemonset: %+v", ds.Spec.Template.Spec)
	}
	cm := find[*corev1.ConfigMap](objs)[0]
	if tmpl, err := libcni.ConfListFromBytes([]byte(cm.Data["cni-conf.json"])); err != nil || tmpl.Name != cni.KubeRouterNetwork {
		t.Errorf("ConfigMap cni-conf.json: %v", err)
	}
	if b := find[*rbacv1.ClusterRoleBinding](objs)[0]; b.Subjects[0].Name != "kube-router" || b.RoleRef.Name != "kube-router" {
		t.Errorf("binding: %+v", b)
	}
}

func TestRenderCalico(t *testing.T) {
	for _, tc := range []struct {
		yaml                       string
		backend, ipip, vxlan, mtu  string
		liveness                   string
		conflistMTU                float64
		assignV6                   string
		wantIPv6Pool, wantIPv4Pool bool
	}{
		{"provider: calico", "vxlan", "Never", "Always", "0", "-felix-live", 1450, "false", false, true},
		{"provider: calico\ncalico: {mode: ipip, mtu: 1440}", "bird", "Always", "Never", "1440", "-bird-live", 1440, "false", false, true},
		{"provider: calico\ncalico: {mode: bird}", "bird", "Never", "Never", "0", "-bird-live", 1500, "false", false, true},
		{"provider: calico\ndualStack: {enabled: true}", "vxlan", "Never", "Always", "0", "-felix-live", 1430, "true", true, true},
	} {
		t.Run(strings.ReplaceAll(tc.yaml, "\n", " "), func(t *testing.T) {
			out := t.TempDir()
			r, err := cni.Render(mustParse(t, tc.yaml), out, cni.RenderOptions{Node: cni.NodeOptions{NodeName: "worker-1"}})
			if err != nil {
				t.Fatal(err)
			}
			want := []string{filepath.Join(out, "manifests", "calico-crds"), filepath.Join(out, "manifests", "calico")}
			if !slices.Equal(r.Stacks, want) {
				t.Fatalf("stacks %v, want %v", r.Stacks, want)
			}
			checkCalicoConflist(t, r.Conflist, tc.conflistMTU, tc.assignV6)

			objs := readStack(t, r.Stacks[1])
			ds := find[*appsv1.DaemonSet](objs)[0]
			node := ds.Spec.Template.Spec.Containers[0]
			e := envOf(node)
			if e["CALICO_IPV4POOL_IPIP"] != tc.ipip || e["CALICO_IPV4POOL_VXLAN"] != tc.vxlan || e["FELIX_VXLANPORT"] != "4789" || e["FELIX_VXLANVNI"] != "4096" || e["CALICO_IPV4POOL_CIDR"] != "10.244.0.0/16" {
				t.Errorf("calico-node env: %v", e)
			}
			if _, ok := e["CALICO_IPV6POOL_CIDR"]; ok != tc.wantIPv6Pool {
				t.Errorf("CALICO_IPV6POOL_CIDR set = %v, want %v", ok, tc.wantIPv6Pool)
			}
			if !slices.Contains(node.LivenessProbe.Exec.Command, tc.liveness) {
				t.Errorf("liveness %v lacks %s", node.LivenessProbe.Exec.Command, tc.liveness)
			}
			cm := find[*corev1.ConfigMap](objs)[0]
			if cm.Data["calico_backend"] != tc.backend || cm.Data["veth_mtu"] != tc.mtu || !strings.Contains(cm.Data["cni_network_config"], `"mtu": __CNI_MTU__`) {
				t.Errorf("calico-config: %v", cm.Data)
			}
			if len(find[*appsv1.Deployment](objs)) != 1 {
				t.Errorf("no kube-controllers Deployment")
			}
		})
	}
}

func checkCalicoConflist(t *testing.T, path string, mtu float64, assignV6 string) {
	t.Helper()
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	// No bandwidth plugin: calico/cni no longer ships it (Felix applies
	// bandwidth annotations itself since v3.30).
	if list.CNIVersion != "1.0.0" || !slices.Equal(types, []string{"calico", "portmap"}) {
		t.Fatalf("conflist %s: version %s, plugins %v", path, list.CNIVersion, types)
	}
	var cal map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &cal); err != nil {
		t.Fatal(err)
	}
	ipam := cal["ipam"].(map[string]any)
	if ipam["type"] != "calico-ipam" || ipam["assign_ipv6"] != assignV6 || cal["mtu"] != mtu || cal["nodename"] != "worker-1" || cal["datastore_type"] != "kubernetes" {
		t.Errorf("calico plugin: %v", cal)
	}
}

// calicoV1Resources are Calico v1 resources calico-node -startup reads to
// decide on a data migration: RBAC names them, no CRD defines them.
var calicoV1Resources = []string{"globalfelixconfigs", "globalbgpconfigs"}

// TestCalicoCRDs: every CRD passes kube-apiserver's own CRD validation
// (structural schema included), and the CRDs and the RBAC agree: every
// crd.projectcalico.org or policy.networking.k8s.io resource a role names
// has a CRD (but Calico v1's, which must have none), and calico-node may
// list and watch every CRD.
func TestCalicoCRDs(t *testing.T) {
	out := t.TempDir()
	r, err := cni.Render(mustParse(t, "provider: calico"), out, cni.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	crds := find[*apiextensionsv1.CustomResourceDefinition](readStack(t, r.Stacks[0]))
	groups := map[string]map[string]bool{cni.CalicoGroup: {}, cni.PolicyGroup: {}}
	for _, crd := range crds {
		var internal apiextensions.CustomResourceDefinition
		if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(crd, &internal, nil); err != nil {
			t.Fatal(err)
		}
		// As kube-apiserver's create strategy does before validating.
		for _, v := range crd.Spec.Versions {
			if v.Storage {
				internal.Status.StoredVersions = []string{v.Name}
			}
		}
		if errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), &internal); len(errs) > 0 {
			t.Errorf("CRD %s: %v", crd.Name, errs.ToAggregate())
		}
		plurals, ok := groups[crd.Spec.Group]
		if !ok {
			t.Errorf("CRD %s: group %s", crd.Name, crd.Spec.Group)
			continue
		}
		plurals[crd.Spec.Names.Plural] = true
	}
	// Calico v3.31.0's manifests/calico.yaml: 22 + 2 CRDs.
	for group, need := range map[string][]string{
		cni.CalicoGroup: {"bgpconfigurations", "bgpfilters", "bgppeers", "blockaffinities", "caliconodestatuses", "clusterinformations",
			"felixconfigurations", "globalnetworkpolicies", "globalnetworksets", "hostendpoints", "ipamblocks", "ipamconfigs", "ipamhandles",
			"ippools", "ipreservations", "kubecontrollersconfigurations", "networkpolicies", "networksets", "stagedglobalnetworkpolicies",
			"stagedkubernetesnetworkpolicies", "stagednetworkpolicies", "tiers"},
		cni.PolicyGroup: {"adminnetworkpolicies", "baselineadminnetworkpolicies"},
	} {
		for _, p := range need {
			if !groups[group][p] {
				t.Errorf("no CRD for %s.%s", p, group)
			}
		}
		if len(groups[group]) != len(need) {
			t.Errorf("%d CRDs in %s, want %d", len(groups[group]), group, len(need))
		}
	}
	for _, p := range calicoV1Resources {
		if groups[cni.CalicoGroup][p] {
			t.Errorf("a CRD for Calico v1's %s", p)
		}
	}
	roles := find[*rbacv1.ClusterRole](readStack(t, r.Stacks[1]))
	for _, role := range roles {
		for _, rule := range role.Rules {
			for group, plurals := range groups {
				if !slices.Contains(rule.APIGroups, group) {
					continue
				}
				for _, res := range rule.Resources {
					if !plurals[res] && !(group == cni.CalicoGroup && slices.Contains(calicoV1Resources, res)) {
						t.Errorf("ClusterRole %s names %s.%s, which has no CRD", role.Name, res, group)
					}
				}
			}
		}
		if role.Name == "calico-node" {
			for group, plurals := range groups {
				for p := range plurals {
					if !allows(role, group, p, "list", "") || !allows(role, group, p, "watch", "") {
						t.Errorf("calico-node may not list and watch %s.%s", p, group)
					}
				}
			}
		}
	}
	if len(roles) != 4 {
		t.Errorf("%d ClusterRoles, want calico-node, calico-cni-plugin, calico-kube-controllers, calico-tier-getter", len(roles))
	}
}

// TestAdminNetworkPolicyCRDs: the AdminNetworkPolicy API's CRDs take a
// valid policy and refuse what network-policy-api v0.1.1 refuses.
func TestAdminNetworkPolicyCRDs(t *testing.T) {
	r, err := cni.Render(mustParse(t, "provider: calico"), t.TempDir(), cni.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	crds := map[string]*apiextensionsv1.CustomResourceDefinition{}
	for _, crd := range find[*apiextensionsv1.CustomResourceDefinition](readStack(t, r.Stacks[0])) {
		crds[crd.Spec.Names.Kind] = crd
	}
	rule := map[string]any{"name": "r", "action": "Allow", "from": []any{map[string]any{"namespaces": map[string]any{}}}}
	for _, tc := range []struct {
		kind, name string
		spec       map[string]any
		ok         bool
	}{
		{"AdminNetworkPolicy", "a", map[string]any{"priority": 10, "subject": map[string]any{"namespaces": map[string]any{}}, "ingress": []any{rule}}, true},
		{"AdminNetworkPolicy", "a", map[string]any{"subject": map[string]any{"namespaces": map[string]any{}}}, false},
		{"AdminNetworkPolicy", "a", map[string]any{"priority": 1001, "subject": map[string]any{"namespaces": map[string]any{}}}, false},
		{"AdminNetworkPolicy", "a", map[string]any{"priority": 1, "subject": map[string]any{}}, false},
		{"AdminNetworkPolicy", "a", map[string]any{"priority": 1, "subject": map[string]any{"pods": map[string]any{}}, "egress": []any{map[string]any{"action": "Deny"}}}, false},
		{"BaselineAdminNetworkPolicy", "default", map[string]any{"subject": map[string]any{"pods": map[string]any{}}, "ingress": []any{rule}}, true},
		{"BaselineAdminNetworkPolicy", "other", map[string]any{"subject": map[string]any{"pods": map[string]any{}}}, false},
	} {
		crd := crds[tc.kind]
		if crd == nil {
			t.Fatalf("no %s CRD", tc.kind)
		}
		if crd.Spec.Group != cni.PolicyGroup || crd.Spec.Scope != apiextensionsv1.ClusterScoped || len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Name != "v1alpha1" {
			t.Errorf("%s: group %s, scope %s, versions %v", tc.kind, crd.Spec.Group, crd.Spec.Scope, crd.Spec.Versions)
		}
		obj := map[string]any{"apiVersion": cni.PolicyGroup + "/v1alpha1", "kind": tc.kind, "metadata": map[string]any{"name": tc.name}, "spec": tc.spec}
		errs := validateCustomResource(t, crd, obj)
		if (len(errs) == 0) != tc.ok {
			t.Errorf("%s %s %v: errors %v, want ok=%v", tc.kind, tc.name, tc.spec, errs, tc.ok)
		}
	}
}

// validateCustomResource validates obj as kube-apiserver does on create:
// the OpenAPI schema, then the CEL rules.
func validateCustomResource(t *testing.T, crd *apiextensionsv1.CustomResourceDefinition, obj map[string]any) field.ErrorList {
	t.Helper()
	var internal apiextensions.JSONSchemaProps
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(crd.Spec.Versions[0].Schema.OpenAPIV3Schema, &internal, nil); err != nil {
		t.Fatal(err)
	}
	validator, _, err := crvalidation.NewSchemaValidator(&internal)
	if err != nil {
		t.Fatal(err)
	}
	// JSON numbers, as a decoded request body has them.
	data, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	var decoded map[string]any
	if err := json.Unmarshal(data, &decoded); err != nil {
		t.Fatal(err)
	}
	errs := crvalidation.ValidateCustomResource(nil, decoded, validator)
	structural, err := structuralschema.NewStructural(&internal)
	if err != nil {
		t.Fatal(err)
	}
	celErrs, _ := cel.NewValidator(structural, true, celconfig.PerCallLimit).Validate(context.Background(), nil, structural, decoded, nil, celconfig.RuntimeCELCostBudget)
	return append(errs, celErrs...)
}

// upstreamRule is one rule of an upstream ClusterRole, one resource and
// verb at a time.
type upstreamRule struct {
	group, resource, resourceName string
	verbs                         []string
}

// TestCalicoRBACCoversUpstream: every ClusterRole rule of Calico v3.31.0's
// manifests/calico.yaml (projectcalico/calico at b1f3c43f8437, tag
// v3.31.0) is granted by the rendered role of the same name, but
// kube-controllers' namespaces and services (its loadbalancer controller,
// which isthmus does not enable).
func TestCalicoRBACCoversUpstream(t *testing.T) {
	r, err := cni.Render(mustParse(t, "provider: calico"), t.TempDir(), cni.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objs := readStack(t, r.Stacks[1])
	read, manage := []string{"get", "list", "watch"}, []string{"get", "list", "create", "update", "delete"}
	c := cni.CalicoGroup
	upstream := map[string][]upstreamRule{
		"calico-node": {
			{"", "serviceaccounts/token", "calico-cni-plugin", []string{"create"}},
			{"", "pods", "", []string{"get", "list", "watch"}},
			{"", "nodes", "", []string{"get", "list", "watch"}},
			{"", "namespaces", "", []string{"get", "list", "watch"}},
			{"discovery.k8s.io", "endpointslices", "", []string{"list", "watch"}},
			{"", "endpoints", "", read},
			{"", "services", "", read},
			{"", "configmaps", "", []string{"get"}},
			{"", "nodes/status", "", []string{"patch", "update"}},
			{"networking.k8s.io", "networkpolicies", "", []string{"list", "watch"}},
			{cni.PolicyGroup, "adminnetworkpolicies", "", []string{"list", "watch"}},
			{cni.PolicyGroup, "baselineadminnetworkpolicies", "", []string{"list", "watch"}},
			{"", "serviceaccounts", "", []string{"list", "watch"}},
			{"", "pods/status", "", []string{"patch"}},
			{c, "globalfelixconfigs", "", read}, {c, "felixconfigurations", "", append([]string{"create", "update"}, read...)},
			{c, "bgppeers", "", append([]string{"create", "update"}, read...)}, {c, "bgpfilters", "", read},
			{c, "globalbgpconfigs", "", read}, {c, "bgpconfigurations", "", append([]string{"create", "update"}, read...)},
			{c, "ippools", "", append([]string{"create", "update"}, read...)}, {c, "ipreservations", "", read},
			{c, "ipamblocks", "", append([]string{"create", "update", "delete"}, read...)},
			{c, "globalnetworkpolicies", "", read}, {c, "stagedglobalnetworkpolicies", "", read},
			{c, "networkpolicies", "", read}, {c, "stagednetworkpolicies", "", read}, {c, "stagedkubernetesnetworkpolicies", "", read},
			{c, "globalnetworksets", "", read}, {c, "networksets", "", read},
			{c, "clusterinformations", "", append([]string{"create", "update"}, read...)},
			{c, "hostendpoints", "", read},
			{c, "blockaffinities", "", append([]string{"create", "update", "delete"}, read...)},
			{c, "caliconodestatuses", "", append([]string{"update"}, read...)},
			{c, "tiers", "", append([]string{"create"}, read...)},
			{c, "ipamhandles", "", manage},
			{c, "ipamconfigs", "", []string{"get", "create"}},
			{"apps", "daemonsets", "", []string{"get"}},
		},
		"calico-cni-plugin": {
			{"", "pods", "", []string{"get"}}, {"", "nodes", "", []string{"get"}}, {"", "namespaces", "", []string{"get"}},
			{"", "pods/status", "", []string{"patch"}},
			{c, "blockaffinities", "", manage}, {c, "ipamblocks", "", manage}, {c, "ipamhandles", "", manage},
			{c, "clusterinformations", "", manage}, {c, "ippools", "", manage}, {c, "ipreservations", "", manage}, {c, "ipamconfigs", "", manage},
		},
		"calico-kube-controllers": {
			{"", "nodes", "", read}, {"", "pods", "", read},
			{c, "ipreservations", "", []string{"list"}},
			{c, "blockaffinities", "", append([]string{"watch"}, manage...)}, {c, "ipamblocks", "", append([]string{"watch"}, manage...)},
			{c, "ipamhandles", "", append([]string{"watch"}, manage...)}, {c, "ipamconfigs", "", append([]string{"watch"}, manage...)},
			{c, "tiers", "", append([]string{"watch"}, manage...)},
			{c, "ippools", "", []string{"list", "watch"}},
			{c, "hostendpoints", "", append([]string{"watch"}, manage...)},
			{c, "clusterinformations", "", []string{"get", "list", "create", "update", "watch"}},
			{c, "kubecontrollersconfigurations", "", []string{"get", "list", "create", "update", "watch"}},
		},
		"calico-tier-getter": {{"projectcalico.org", "tiers", "", []string{"get"}}},
	}
	roles := map[string]*rbacv1.ClusterRole{}
	for _, role := range find[*rbacv1.ClusterRole](objs) {
		roles[role.Name] = role
	}
	for name, rules := range upstream {
		role := roles[name]
		if role == nil {
			t.Errorf("no ClusterRole %s", name)
			continue
		}
		for _, u := range rules {
			for _, verb := range u.verbs {
				if !allows(role, u.group, u.resource, verb, u.resourceName) {
					t.Errorf("ClusterRole %s may not %s %s.%s (Calico v3.31.0's may)", name, verb, u.resource, u.group)
				}
			}
		}
	}
	bindings := map[string]rbacv1.Subject{}
	for _, b := range find[*rbacv1.ClusterRoleBinding](objs) {
		if b.RoleRef.Name != b.Name || len(b.Subjects) != 1 {
			t.Errorf("binding %s: %+v", b.Name, b)
			continue
		}
		bindings[b.Name] = b.Subjects[0]
	}
	for name := range upstream {
		want := rbacv1.Subject{Kind: "ServiceAccount", Name: name, Namespace: "kube-system"}
		if name == "calico-tier-getter" {
			want = rbacv1.Subject{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "system:kube-controller-manager"}
		}
		if bindings[name] != want {
			t.Errorf("ClusterRoleBinding %s binds %+v, want %+v", name, bindings[name], want)
		}
	}
}

// TestKubeRouterRBAC: the ClusterRole is kube-router's own, as its
// daemonset/generic-kuberouter.yaml grants it at v2.1.0 and v2.5.0 (the
// same rules in both), but for group extensions, gone since Kubernetes
// 1.16 and read by neither version.
func TestKubeRouterRBAC(t *testing.T) {
	r, err := cni.Render(mustParse(t, ""), t.TempDir(), cni.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roles := find[*rbacv1.ClusterRole](readStack(t, r.Stacks[0]))
	if len(roles) != 1 || roles[0].Name != "kube-router" {
		t.Fatalf("ClusterRoles %v", roles)
	}
	read := []string{"get", "list", "watch"}
	want := []upstreamRule{
		{"", "namespaces", "", read}, {"", "pods", "", read}, {"", "services", "", read}, {"", "nodes", "", read}, {"", "endpoints", "", read},
		{"networking.k8s.io", "networkpolicies", "", read},
		{"coordination.k8s.io", "leases", "", []string{"get", "create", "update"}},
		{"", "services/status", "", []string{"update"}},
		{"discovery.k8s.io", "endpointslices", "", read},
	}
	granted := 0
	for _, rule := range roles[0].Rules {
		granted += len(rule.APIGroups) * len(rule.Resources) * len(rule.Verbs)
	}
	wanted := 0
	for _, u := range want {
		wanted += len(u.verbs)
		for _, verb := range u.verbs {
			if !allows(roles[0], u.group, u.resource, verb, "") {
				t.Errorf("kube-router may not %s %s.%s", verb, u.resource, u.group)
			}
		}
	}
	if granted != wanted {
		t.Errorf("kube-router's ClusterRole grants %d group/resource/verb triples, kube-router's own %d", granted, wanted)
	}
}

// allows: role grants verb on resource of group (on the object named name,
// if name is set; a rule limited to other names does not count).
func allows(role *rbacv1.ClusterRole, group, resource, verb, name string) bool {
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 && (name == "" || !slices.Contains(r.ResourceNames, name)) {
			continue
		}
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

func TestRenderCustomWritesNothing(t *testing.T) {
	out := t.TempDir()
	r, err := cni.Render(mustParse(t, "provider: custom"), out, cni.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Conflist != "" || len(r.Stacks) != 0 {
		t.Errorf("custom rendered %+v", r)
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if e.Name() != cni.StateFileName {
			t.Errorf("custom wrote %s", e.Name())
		}
	}
	// The lock holds for custom too: a later kube-router is a change.
	if _, err := cni.Render(mustParse(t, ""), out, cni.RenderOptions{}); err == nil {
		t.Errorf("kuberouter rendered over a custom cluster")
	}
}

// TestRenderReplacesStacksWhole: a re-render replaces each stack folder as
// a whole (a file that is no longer rendered disappears) and leaves no
// staging folder or temporary file behind.
func TestRenderReplacesStacksWhole(t *testing.T) {
	out := t.TempDir()
	c := mustParse(t, "provider: calico")
	r, err := cni.Render(c, out, cni.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(r.Stacks[1], "99-old.yaml")
	if err := os.WriteFile(stale, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.Calico.VXLANPort = 4790
	// Without Force: refused, naming what exists, and nothing touched.
	_, err = cni.Render(c, out, cni.RenderOptions{})
	var ee *cni.ExistsError
	if !errors.As(err, &ee) || !errors.Is(err, fs.ErrExist) || len(ee.Paths) != 3 || ee.Paths[0] != r.Conflist || ee.Paths[2] != r.Stacks[1] {
		t.Fatalf("re-render without Force: %v, want an ExistsError naming the conflist and both stacks", err)
	}
	if _, err := os.Stat(stale); err != nil {
		t.Errorf("a refused re-render touched the stack: %v", err)
	}
	if _, err := cni.Render(c, out, cni.RenderOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale file survived the re-render: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(r.Stacks[1], "02-calico-node.yaml"))
	if err != nil || !strings.Contains(string(data), `value: "4790"`) {
		t.Errorf("re-render did not update calico-node (err %v)", err)
	}
	err = filepath.WalkDir(out, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(d.Name(), ".tmp-") || strings.HasPrefix(d.Name(), ".isthmus-staging") {
			t.Errorf("left behind: %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRenderListsFilesAndInstallRefusesExisting: Rendered.Files lists
// every file written, the provider lock only on the render that recorded
// it; Install leaves an existing conflist alone without Force.
func TestRenderListsFilesAndInstallRefusesExisting(t *testing.T) {
	out := t.TempDir()
	c := mustParse(t, "provider: kuberouter")
	r, err := cni.Render(c, out, cni.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{r.Conflist, filepath.Join(r.Stacks[0], "00-rbac.yaml"), filepath.Join(r.Stacks[0], "01-configmap.yaml"),
		filepath.Join(r.Stacks[0], "02-daemonset.yaml"), filepath.Join(out, cni.StateFileName)}
	if !slices.Equal(r.Files, want) {
		t.Errorf("Files %v, want %v", r.Files, want)
	}
	if r, err = cni.Render(c, out, cni.RenderOptions{Force: true}); err != nil || slices.Contains(r.Files, filepath.Join(out, cni.StateFileName)) {
		t.Errorf("second render: %v, files %v (the lock was recorded before)", err, r.Files)
	}

	conf, state := filepath.Join(out, "net.d"), filepath.Join(out, "state.json")
	path, err := cni.Install(c, conf, cni.InstallOptions{StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := cni.Install(c, conf, cni.InstallOptions{StateFile: state}); !errors.Is(err, fs.ErrExist) {
		t.Errorf("install over an existing conflist: %v, want an ExistsError", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "{}" {
		t.Errorf("a refused install replaced the conflist")
	}
	if _, err := cni.Install(c, conf, cni.InstallOptions{StateFile: state, Force: true}); err != nil {
		t.Errorf("install with Force: %v", err)
	}
}

func TestRenderRefusesInvalid(t *testing.T) {
	out := t.TempDir()
	c, err := cni.Parse([]byte("dualStack: {enabled: true}"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cni.Render(c, out, cni.RenderOptions{}); err == nil {
		t.Fatal("rendered an invalid config")
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("an invalid config wrote %d entries", len(entries))
	}
	good := mustParse(t, "podCIDR: 198.18.0.0/16\nserviceCIDR: 198.19.0.0/16")
	for _, bad := range []string{"198.20.0.0/24", "198.18.5.0/25", "198.18.5.0/23"} {
		if _, err := good.Conflist(cni.NodeOptions{PodCIDR: mustPrefix(t, bad)}); err == nil {
			t.Errorf("node pod CIDR %s accepted for podCIDR 198.18.0.0/16 and /24 node slices", bad)
		}
	}
}

// TestConfigBuiltInGo: a Config literal (no Load) gets the defaults in
// Validate and Render, and the caller's blocks are left as they were.
func TestConfigBuiltInGo(t *testing.T) {
	k := &cni.CalicoConfig{Mode: "ipip"}
	c := cni.Config{Provider: cni.Calico, Calico: k}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := cni.Render(c, t.TempDir(), cni.RenderOptions{Node: cni.NodeOptions{NodeName: "worker-1"}})
	if err != nil {
		t.Fatal(err)
	}
	checkCalicoConflist(t, r.Conflist, 1480, "false")
	if k.VXLANPort != 0 || k.Overlay != "" || c.PodCIDR != "" {
		t.Errorf("the caller's config was changed: %+v, %q", k, c.PodCIDR)
	}
}
