package cni_test

import (
	"errors"
	"strings"
	"testing"

	"isthmus.dev/cni"
)

// fieldErrors flattens Validate's joined error.
func fieldErrors(err error) []*cni.FieldError {
	var out []*cni.FieldError
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				walk(c)
			}
			return
		}
		var fe *cni.FieldError
		if errors.As(e, &fe) {
			out = append(out, fe)
		}
	}
	walk(err)
	return out
}

func TestDefaults(t *testing.T) {
	c, err := cni.Parse([]byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the empty config is not valid: %v", err)
	}
	if c.Provider != cni.KubeRouter || c.PodCIDR != "10.244.0.0/16" || c.ServiceCIDR != "10.96.0.0/12" || c.ClusterDomain != "cluster.local" {
		t.Errorf("defaults: %+v", c)
	}
	k := c.KubeRouter
	if k == nil || k.Hairpin || !*k.AutoMTU || *k.MetricsPort != 8080 || k.IPMasq {
		t.Errorf("kube-router defaults (hairpin off unless set): %+v", k)
	}
	if c.Calico != nil {
		t.Errorf("calico block filled for provider kuberouter")
	}
	cal, err := cni.Parse([]byte("provider: calico"))
	if err != nil {
		t.Fatal(err)
	}
	if k := cal.Calico; k.Mode != "vxlan" || k.VXLANPort != 4789 || k.VXLANVNI != 4096 || k.Overlay != "Always" || k.MTU != 0 {
		t.Errorf("calico defaults (vxlan on 4789): %+v", k)
	}
	bird, err := cni.Parse([]byte("provider: calico\ncalico: {mode: bird}"))
	if err != nil {
		t.Fatal(err)
	}
	if bird.Calico.Overlay != "Never" {
		t.Errorf("mode bird: overlay %q, want Never", bird.Calico.Overlay)
	}
	if err := bird.Validate(); err != nil {
		t.Errorf("mode bird: %v", err)
	}
	if d := cni.DefaultConfig(); d.Provider != cni.KubeRouter || d.Validate() != nil {
		t.Errorf("DefaultConfig: %+v, %v", d, d.Validate())
	}
}

func TestParseIsStrict(t *testing.T) {
	for _, y := range []string{
		"provder: calico",
		"provider: calico\ncalico: {vxlanPrt: 4789}",
		"kuberouter: {hairpinMode: true}",
		"podCIDR: [1, 2]",
	} {
		if _, err := cni.Parse([]byte(y)); err == nil {
			t.Errorf("%q parsed without error", y)
		}
	}
}

// TestValidate covers every rule: each invalid config names the field and
// says what is allowed; each valid one passes.
func TestValidate(t *testing.T) {
	valid := map[string]string{
		"defaults":               "",
		"kuberouter hairpin":     "kuberouter: {hairpin: true, ipMasq: true}",
		"kuberouter fixed mtu":   "kuberouter: {autoMTU: false, mtu: 1400, metricsPort: 0}",
		"kuberouter armv7":       "nodes: {architectures: [amd64, arm]}",
		"kuberouter extra args":  "kuberouter: {extraArgs: {bgp-holdtime: 30s}}",
		"calico dual-stack":      "provider: calico\ndualStack: {enabled: true}",
		"calico windows":         "provider: calico\nnodes: {windows: true}",
		"calico ipip":            "provider: calico\ncalico: {mode: ipip, overlay: CrossSubnet}",
		"calico ipv6":            "provider: calico\npodCIDR: fd10::/64\nserviceCIDR: fd20::/112\nnodeCIDRMaskSizeIPv6: 80",
		"calico wireguard mtu":   "provider: calico\ncalico: {wireguard: true, mtu: 1400, ipAutodetectionMethod: 'interface=eth.*'}",
		"custom":                 "provider: custom\ndualStack: {enabled: true}\nnodes: {windows: true, architectures: [arm]}",
		"small pod network":      "podCIDR: 198.18.0.0/24\nnodeCIDRMaskSize: 26",
		"pull policy":            "images: {pullPolicy: Always, kubeRouter: 'registry.local/kube-router:v2'}",
		"ipv6 single-stack k-r":  "podCIDR: fd10::/64\nserviceCIDR: fd20::/112\nnodeCIDRMaskSizeIPv6: 80",
		"calico env override":    "provider: calico\ncalico: {envVars: {FELIX_LOGSEVERITYSCREEN: info}}",
		"calico block-sized net": "provider: calico\npodCIDR: 198.18.0.0/26\nnodeCIDRMaskSize: 26",
	}
	for name, y := range valid {
		t.Run("valid/"+name, func(t *testing.T) {
			c, err := cni.Parse([]byte(y))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("%q: %v", y, err)
			}
		})
	}

	invalid := []struct {
		name, yaml, field, msg string
	}{
		{"unknown provider", "provider: flannel", "provider", "allowed: kuberouter, calico, custom"},
		{"podCIDR not a CIDR", "podCIDR: 10.244.0.0", "podCIDR", "not a CIDR"},
		{"podCIDR host bits", "podCIDR: 10.244.1.0/16", "podCIDR", "host bits"},
		{"serviceCIDR family", "serviceCIDR: fd00::/108", "serviceCIDR", "same IP family"},
		{"overlap", "serviceCIDR: 10.244.0.0/16", "serviceCIDR", "overlaps podCIDR"},
		{"service too big v4", "serviceCIDR: 10.0.0.0/8", "serviceCIDR", "12 to 30"},
		{"service too big v6", "podCIDR: fd10::/64\nserviceCIDR: fd20::/64\nnodeCIDRMaskSizeIPv6: 80", "serviceCIDR", "108 to 126"},
		{"node mask range", "nodeCIDRMaskSize: 31", "nodeCIDRMaskSize", "allowed: 16 to 30"},
		{"node mask below pod prefix", "podCIDR: 10.244.0.0/24\nnodeCIDRMaskSize: 20", "nodeCIDRMaskSize", "must be at least"},
		{"too many node slices", "podCIDR: 10.0.0.0/8\nnodeCIDRMaskSize: 28", "nodeCIDRMaskSize", "more than 65536"},
		{"ipv6 node mask below pod prefix", "podCIDR: fd10::/112\nserviceCIDR: fd20::/112\nnodeCIDRMaskSizeIPv6: 100", "nodeCIDRMaskSizeIPv6", "must be at least"},
		{"ipv6 too many node slices", "podCIDR: fd10::/64\nserviceCIDR: fd20::/112", "nodeCIDRMaskSizeIPv6", "more than 65536"},
		{"cluster domain", "clusterDomain: Cluster_Local", "clusterDomain", "DNS subdomain"},
		{"kube-router dual-stack", "dualStack: {enabled: true}", "dualStack.enabled", "kube-router does not support dual-stack"},
		{"ipv6 fields without dual-stack", "provider: calico\ndualStack: {IPv6podCIDR: fd00::/108}", "dualStack.enabled", "dual-stack is off"},
		{"dual-stack v6 pod not v6", "provider: calico\ndualStack: {enabled: true, IPv6podCIDR: 10.1.0.0/16}", "dualStack.IPv6podCIDR", "must be an IPv6 network"},
		{"dual-stack v4 pod is v6", "provider: calico\npodCIDR: fd10::/64\nserviceCIDR: fd20::/112\nnodeCIDRMaskSizeIPv6: 80\ndualStack: {enabled: true}", "podCIDR", "must be IPv4 with dual-stack"},
		{"dual-stack v6 overlap", "provider: calico\ndualStack: {enabled: true, IPv6podCIDR: fd00::/108, IPv6serviceCIDR: fd00::/112}", "dualStack.IPv6serviceCIDR", "overlaps"},
		{"dual-stack v6 service size", "provider: calico\ndualStack: {enabled: true, IPv6serviceCIDR: 'fd01::/64'}", "dualStack.IPv6serviceCIDR", "108 to 126"},
		{"unknown arch", "nodes: {architectures: [sparc]}", "nodes.architectures[0]", "allowed: amd64, arm64, arm"},
		{"calico armv7", "provider: calico\nnodes: {architectures: [amd64, arm]}", "nodes.architectures[1]", "Calico does not support armv7"},
		{"kube-router windows", "nodes: {windows: true}", "nodes.windows", "kube-router does not support Windows"},
		{"calico block with kube-router", "calico: {mode: vxlan}", "calico", "only allowed with provider calico"},
		{"kuberouter block with calico", "provider: calico\nkuberouter: {hairpin: true}", "kuberouter", "only allowed with provider kuberouter"},
		{"kuberouter block with custom", "provider: custom\nkuberouter: {hairpin: true}", "kuberouter", "only allowed with provider kuberouter"},
		{"calico mode", "provider: calico\ncalico: {mode: geneve}", "calico.mode", "allowed: vxlan, ipip, bird"},
		{"calico overlay", "provider: calico\ncalico: {overlay: Sometimes}", "calico.overlay", "allowed: Always, CrossSubnet, Never"},
		{"bird with overlay", "provider: calico\ncalico: {mode: bird, overlay: Always}", "calico.overlay", "allowed: Never"},
		{"vxlan without overlay", "provider: calico\ncalico: {overlay: Never}", "calico.overlay", "needs an overlay"},
		{"ipip on ipv6", "provider: calico\npodCIDR: fd10::/64\nserviceCIDR: fd20::/112\nnodeCIDRMaskSizeIPv6: 80\ncalico: {mode: ipip}", "calico.mode", "IPv4 only"},
		{"vxlan port", "provider: calico\ncalico: {vxlanPort: 70000}", "calico.vxlanPort", "1 to 65535"},
		{"vxlan vni", "provider: calico\ncalico: {vxlanVNI: 16777216}", "calico.vxlanVNI", "1 to 16777215"},
		{"calico mtu", "provider: calico\ncalico: {mtu: 100}", "calico.mtu", "576 to 9000"},
		{"calico mtu ipv6", "provider: calico\ndualStack: {enabled: true}\ncalico: {mtu: 1000}", "calico.mtu", "1280 to 9000"},
		{"windows ipip", "provider: calico\nnodes: {windows: true}\ncalico: {mode: ipip}", "calico.mode", "Windows nodes need Calico's vxlan mode"},
		{"windows port", "provider: calico\nnodes: {windows: true}\ncalico: {vxlanPort: 8472}", "calico.vxlanPort", "allowed: 4789"},
		{"windows vni", "provider: calico\nnodes: {windows: true}\ncalico: {vxlanVNI: 1}", "calico.vxlanVNI", "allowed: 4096"},
		{"autodetect", "provider: calico\ncalico: {ipAutodetectionMethod: magic}", "calico.ipAutodetectionMethod", "first-found"},
		{"autodetect v6", "provider: calico\ndualStack: {enabled: true}\ncalico: {ipV6AutodetectionMethod: 'interface='}", "calico.ipV6AutodetectionMethod", "first-found"},
		{"cni kubeconfig", "provider: calico\ncalico: {cniKubeconfig: calico-kubeconfig}", "calico.cniKubeconfig", "absolute path"},
		{"env var name", "provider: calico\ncalico: {envVars: {'A=B': x}}", "calico.envVars", "not an environment variable"},
		{"calico pool below a block", "provider: calico\npodCIDR: 198.18.0.0/27\nnodeCIDRMaskSize: 27", "podCIDR", "at most 26"},
		{"kube-router mtu with auto", "kuberouter: {mtu: 1400}", "kuberouter.mtu", "autoMTU: false"},
		{"kube-router mtu missing", "kuberouter: {autoMTU: false}", "kuberouter.mtu", "576 to 9000"},
		{"metrics port", "kuberouter: {metricsPort: 65536}", "kuberouter.metricsPort", "1 to 65535"},
		{"extra arg name", "kuberouter: {extraArgs: {'--v': '3'}}", "kuberouter.extraArgs", "without the leading --"},
		{"extra arg owned", "kuberouter: {extraArgs: {hairpin-mode: 'true'}}", "kuberouter.extraArgs", "set by isthmus"},
		{"pull policy", "images: {pullPolicy: Sometimes}", "images.pullPolicy", "allowed: IfNotPresent, Always, Never"},
		{"image with space", "images: {calicoNode: 'quay.io/calico/node v3'}", "images.calicoNode", "without spaces"},
	}
	for _, tc := range invalid {
		t.Run("invalid/"+tc.name, func(t *testing.T) {
			c, err := cni.Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate()
			if !errors.Is(err, cni.ErrInvalid) {
				t.Fatalf("%q: Validate = %v, want an invalid-config error", tc.yaml, err)
			}
			for _, fe := range fieldErrors(err) {
				if fe.Field == tc.field && strings.Contains(fe.Msg, tc.msg) {
					return
				}
			}
			t.Errorf("%q: no error on field %s saying %q; got:\n%v", tc.yaml, tc.field, tc.msg, err)
		})
	}
}

// TestValidateReportsEveryRule: several broken rules are all reported, in
// field order, not just the first.
func TestValidateReportsEveryRule(t *testing.T) {
	c, err := cni.Parse([]byte("provider: calico\npodCIDR: 10.244.0.1/16\ncalico: {mode: geneve, vxlanPort: -1}\nnodes: {architectures: [arm]}"))
	if err != nil {
		t.Fatal(err)
	}
	var fields []string
	for _, fe := range fieldErrors(c.Validate()) {
		fields = append(fields, fe.Field)
	}
	want := []string{"calico.mode", "calico.vxlanPort", "nodes.architectures[0]", "podCIDR"}
	if strings.Join(fields, ",") != strings.Join(want, ",") {
		t.Errorf("fields %v, want %v", fields, want)
	}
}
