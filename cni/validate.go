package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// FieldError is one rule a config breaks: the field (as written in the
// YAML), the value found, and what is allowed.
type FieldError struct {
	Field string
	Value any
	Msg   string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: %v: %s", e.Field, e.Value, e.Msg)
}

// ErrInvalid is matched (errors.Is) by every error Validate returns.
var ErrInvalid = errors.New("invalid network config")

// Is makes every FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Allowed values, for messages and the validation itself.
var (
	allowedArchs       = []string{"amd64", "arm64", "arm", "ppc64le", "s390x", "riscv64"}
	allowedCalicoModes = []string{"vxlan", "ipip", "bird"}
	allowedOverlays    = []string{"Always", "CrossSubnet", "Never"}
	allowedPullPolicy  = []string{"IfNotPresent", "Always", "Never"}
	autodetectPrefixes = []string{"first-found", "kubernetes-internal-ip", "can-reach=", "interface=", "skip-interface=", "cidr="}
	flagName           = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
)

// The MTU range accepted for pod interfaces (IPv4's minimum to jumbo frames).
const (
	minMTU     = 576
	minMTUIPv6 = 1280
	maxMTU     = 9000
)

// Validate checks c, with the defaults of the fields left out, against the
// rules of each provider. It returns every broken rule joined, each a
// *FieldError naming the field and the allowed values; nil when c is valid.
func (c *Config) Validate() error {
	d := c.withDefaults()
	c = &d
	v := &validator{}
	if !slices.Contains(Providers, c.Provider) {
		v.add("provider", c.Provider, "allowed: %s", joinProviders())
	}
	pod, svc := v.cidrs(c)
	v.clusterDomain(c.ClusterDomain)
	v.dualStack(c, pod, svc)
	v.nodes(c)
	v.providerBlocks(c)
	if c.Calico != nil && c.Provider == Calico {
		v.calico(c, pod)
	}
	if c.KubeRouter != nil && c.Provider == KubeRouter {
		v.kubeRouter(c.KubeRouter)
	}
	if !slices.Contains(allowedPullPolicy, c.Images.PullPolicy) {
		v.add("images.pullPolicy", c.Images.PullPolicy, "allowed: %s", strings.Join(allowedPullPolicy, ", "))
	}
	for field, img := range map[string]string{
		"images.kubeRouter": c.Images.KubeRouter, "images.cniPlugins": c.Images.CNIPlugins,
		"images.calicoNode": c.Images.CalicoNode, "images.calicoCNI": c.Images.CalicoCNI,
		"images.calicoKubeControllers": c.Images.CalicoKubeControllers,
	} {
		if img == "" || strings.ContainsAny(img, " \t\n") {
			v.add(field, img, "must be a container image reference without spaces")
		}
	}
	return v.err()
}

type validator struct{ errs []error }

func (v *validator) add(field string, value any, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Field: field, Value: value, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) err() error {
	if len(v.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(v.errs, func(a, b error) int {
		return strings.Compare(a.(*FieldError).Field, b.(*FieldError).Field)
	})
	return errors.Join(v.errs...)
}

// prefix parses a CIDR that must be canonical (no host bits set).
func (v *validator) prefix(field, s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		v.add(field, s, "not a CIDR (want e.g. 10.244.0.0/16 or fd00::/108): %v", err)
		return netip.Prefix{}, false
	}
	if p.Masked() != p {
		v.add(field, s, "host bits are set: the network is %s", p.Masked())
		return netip.Prefix{}, false
	}
	return p, true
}

// cidrs checks podCIDR, serviceCIDR and the node mask sizes, and returns
// the parsed networks (invalid ones as the zero Prefix).
func (v *validator) cidrs(c *Config) (pod, svc netip.Prefix) {
	pod, podOK := v.prefix("podCIDR", c.PodCIDR)
	svc, svcOK := v.prefix("serviceCIDR", c.ServiceCIDR)
	if podOK {
		field, size := "nodeCIDRMaskSize", c.NodeCIDRMaskSize
		if pod.Addr().Is6() {
			field, size = "nodeCIDRMaskSizeIPv6", c.NodeCIDRMaskSizeIPv6
		}
		v.nodeMask(field, size, pod, "podCIDR")
	}
	if svcOK {
		v.serviceSize("serviceCIDR", svc)
	}
	if podOK && svcOK {
		if pod.Addr().Is4() != svc.Addr().Is4() {
			v.add("serviceCIDR", c.ServiceCIDR, "must be the same IP family as podCIDR %s", c.PodCIDR)
		} else if pod.Overlaps(svc) {
			v.add("serviceCIDR", c.ServiceCIDR, "overlaps podCIDR %s: pod and service networks must be disjoint", c.PodCIDR)
		}
	}
	return pod, svc
}

// nodeMask checks a node mask size against its pod network: each node's
// slice must fit, and (as kube-controller-manager requires) the pod network
// may hold at most 2^16 node slices.
func (v *validator) nodeMask(field string, size int, pod netip.Prefix, podField string) {
	lo, hi := 16, 30
	if pod.Addr().Is6() {
		lo, hi = 64, 126
	}
	switch {
	case size < lo || size > hi:
		v.add(field, size, "allowed: %d to %d", lo, hi)
	case size < pod.Bits():
		v.add(field, size, "must be at least the prefix length of %s (%d): a node's slice must fit inside it", podField, pod.Bits())
	case size-pod.Bits() > 16:
		v.add(field, size, "%s %s would hold more than 65536 node slices of /%d: use a mask size of at most %d", podField, pod, size, pod.Bits()+16)
	}
}

// serviceSize applies kube-apiserver's limit on --service-cluster-ip-range.
func (v *validator) serviceSize(field string, svc netip.Prefix) {
	min, max := 12, 30
	if svc.Addr().Is6() {
		min, max = 108, 126
	}
	if svc.Bits() < min || svc.Bits() > max {
		v.add(field, svc, "prefix length must be %d to %d for %s (kube-apiserver's limit)", min, max, family(svc))
	}
}

func family(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func (v *validator) clusterDomain(d string) {
	if errs := validation.IsDNS1123Subdomain(d); len(errs) > 0 {
		v.add("clusterDomain", d, "must be a DNS subdomain such as cluster.local: %s", strings.Join(errs, "; "))
	}
}

func (v *validator) dualStack(c *Config, pod, svc netip.Prefix) {
	ds := c.DualStack
	if !ds.Enabled {
		if ds.IPv6PodCIDR != "" || ds.IPv6ServiceCIDR != "" {
			v.add("dualStack.enabled", false, "IPv6podCIDR and IPv6serviceCIDR are set but dual-stack is off: set enabled: true or remove them")
		}
		return
	}
	if c.Provider == KubeRouter {
		v.add("dualStack.enabled", true, "kube-router does not support dual-stack (IPv4/IPv6) networking: use provider calico, or dualStack.enabled: false")
	}
	if pod.IsValid() && !pod.Addr().Is4() {
		v.add("podCIDR", c.PodCIDR, "must be IPv4 with dual-stack: the IPv6 pod network goes in dualStack.IPv6podCIDR")
	}
	if svc.IsValid() && !svc.Addr().Is4() {
		v.add("serviceCIDR", c.ServiceCIDR, "must be IPv4 with dual-stack: the IPv6 service network goes in dualStack.IPv6serviceCIDR")
	}
	pod6, ok6 := v.prefix("dualStack.IPv6podCIDR", ds.IPv6PodCIDR)
	svc6, okS6 := v.prefix("dualStack.IPv6serviceCIDR", ds.IPv6ServiceCIDR)
	if ok6 {
		if !pod6.Addr().Is6() || pod6.Addr().Is4In6() {
			v.add("dualStack.IPv6podCIDR", ds.IPv6PodCIDR, "must be an IPv6 network, e.g. fd00::/108")
			ok6 = false
		} else {
			v.nodeMask("nodeCIDRMaskSizeIPv6", c.NodeCIDRMaskSizeIPv6, pod6, "dualStack.IPv6podCIDR")
		}
	}
	if okS6 {
		if !svc6.Addr().Is6() || svc6.Addr().Is4In6() {
			v.add("dualStack.IPv6serviceCIDR", ds.IPv6ServiceCIDR, "must be an IPv6 network, e.g. fd01::/108")
			okS6 = false
		} else {
			v.serviceSize("dualStack.IPv6serviceCIDR", svc6)
		}
	}
	if ok6 && okS6 && pod6.Overlaps(svc6) {
		v.add("dualStack.IPv6serviceCIDR", ds.IPv6ServiceCIDR, "overlaps dualStack.IPv6podCIDR %s: pod and service networks must be disjoint", ds.IPv6PodCIDR)
	}
}

func (v *validator) nodes(c *Config) {
	for i, arch := range c.Nodes.Architectures {
		field := fmt.Sprintf("nodes.architectures[%d]", i)
		switch {
		case !slices.Contains(allowedArchs, arch):
			v.add(field, arch, "allowed: %s (arm is armv7)", strings.Join(allowedArchs, ", "))
		case arch == "arm" && c.Provider == Calico:
			v.add(field, arch, "Calico does not support armv7 nodes: use provider kuberouter, or remove arm")
		}
	}
	if c.Nodes.Windows && c.Provider == KubeRouter {
		v.add("nodes.windows", true, "kube-router does not support Windows nodes: use provider calico, or nodes.windows: false")
	}
}

// providerBlocks refuses settings for a provider that is not the chosen
// one: they would be silently ignored otherwise.
func (v *validator) providerBlocks(c *Config) {
	if c.Calico != nil && c.Provider != Calico {
		v.add("calico", "set", "calico settings are only allowed with provider calico (provider is %s)", c.Provider)
	}
	if c.KubeRouter != nil && c.Provider != KubeRouter {
		v.add("kuberouter", "set", "kuberouter settings are only allowed with provider kuberouter (provider is %s)", c.Provider)
	}
}

func (v *validator) calico(c *Config, pod netip.Prefix) {
	k := c.Calico
	if !slices.Contains(allowedCalicoModes, k.Mode) {
		v.add("calico.mode", k.Mode, "allowed: %s", strings.Join(allowedCalicoModes, ", "))
	}
	switch {
	case !slices.Contains(allowedOverlays, k.Overlay):
		v.add("calico.overlay", k.Overlay, "allowed: %s", strings.Join(allowedOverlays, ", "))
	case k.Mode == "bird" && k.Overlay != "Never":
		v.add("calico.overlay", k.Overlay, "mode bird has no overlay: allowed: Never")
	case k.Mode != "bird" && k.Overlay == "Never":
		v.add("calico.overlay", k.Overlay, "mode %s needs an overlay: allowed: Always, CrossSubnet (or mode bird for no overlay)", k.Mode)
	}
	v.calicoBlocks(c, pod)
	if k.Mode == "ipip" && pod.IsValid() && pod.Addr().Is6() {
		v.add("calico.mode", k.Mode, "IP-in-IP carries IPv4 only and podCIDR is IPv6: allowed: vxlan, bird")
	}
	if k.VXLANPort < 1 || k.VXLANPort > 65535 {
		v.add("calico.vxlanPort", k.VXLANPort, "allowed: 1 to 65535 (default 4789)")
	}
	if k.VXLANVNI < 1 || k.VXLANVNI > 1<<24-1 {
		v.add("calico.vxlanVNI", k.VXLANVNI, "allowed: 1 to 16777215 (default 4096)")
	}
	minM := minMTU
	if c.DualStack.Enabled || (pod.IsValid() && pod.Addr().Is6()) {
		minM = minMTUIPv6
	}
	if k.MTU != 0 && (k.MTU < minM || k.MTU > maxMTU) {
		v.add("calico.mtu", k.MTU, "allowed: 0 (detect) or %d to %d", minM, maxMTU)
	}
	if c.Nodes.Windows {
		if k.Mode != "vxlan" {
			v.add("calico.mode", k.Mode, "Windows nodes need Calico's vxlan mode: allowed: vxlan")
		}
		if k.VXLANPort != DefaultVXLANPort {
			v.add("calico.vxlanPort", k.VXLANPort, "Windows nodes need VXLAN port 4789: allowed: 4789")
		}
		if k.VXLANVNI != DefaultVXLANVNI {
			v.add("calico.vxlanVNI", k.VXLANVNI, "Windows nodes need VXLAN VNI 4096: allowed: 4096")
		}
	}
	v.autodetect("calico.ipAutodetectionMethod", k.IPAutodetectionMethod)
	if c.DualStack.Enabled {
		v.autodetect("calico.ipV6AutodetectionMethod", k.IPv6AutodetectionMethod)
	}
	if !strings.HasPrefix(k.CNIKubeconfig, "/") {
		v.add("calico.cniKubeconfig", k.CNIKubeconfig, "must be an absolute path on the node")
	}
	for name := range k.EnvVars {
		if name == "" || strings.ContainsAny(name, "= \t") {
			v.add("calico.envVars", name, "not an environment variable name")
		}
	}
}

// Calico's IPAM hands out blocks of /26 (IPv4) and /122 (IPv6): a pool
// smaller than one block holds none.
func (v *validator) calicoBlocks(c *Config, pod netip.Prefix) {
	if pod.IsValid() {
		if max := blockBits(pod); pod.Bits() > max {
			v.add("podCIDR", c.PodCIDR, "Calico needs a pod network of at least one IPAM block: prefix length at most %d", max)
		}
	}
	if c.DualStack.Enabled {
		if p, err := netip.ParsePrefix(c.DualStack.IPv6PodCIDR); err == nil && p.Addr().Is6() && p.Bits() > 122 {
			v.add("dualStack.IPv6podCIDR", c.DualStack.IPv6PodCIDR, "Calico needs a pod network of at least one IPAM block: prefix length at most 122")
		}
	}
}

func blockBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 26
	}
	return 122
}

func (v *validator) autodetect(field, m string) {
	for _, p := range autodetectPrefixes {
		withValue := strings.HasSuffix(p, "=")
		if (!withValue && m == p) || (withValue && strings.HasPrefix(m, p) && len(m) > len(p)) {
			return
		}
	}
	v.add(field, m, "allowed: first-found, kubernetes-internal-ip, can-reach=DEST, interface=REGEX, skip-interface=REGEX, cidr=CIDR[,CIDR]")
}

func (v *validator) kubeRouter(k *KubeRouterConfig) {
	switch {
	case *k.AutoMTU && k.MTU != 0:
		v.add("kuberouter.mtu", k.MTU, "set only with autoMTU: false (autoMTU is on and sets the MTU itself)")
	case !*k.AutoMTU && (k.MTU < minMTU || k.MTU > maxMTU):
		v.add("kuberouter.mtu", k.MTU, "autoMTU is off: allowed: %d to %d", minMTU, maxMTU)
	}
	if p := *k.MetricsPort; p < 0 || p > 65535 {
		v.add("kuberouter.metricsPort", p, "allowed: 0 (off) or 1 to 65535 (default 8080)")
	}
	for name := range k.ExtraArgs {
		if !flagName.MatchString(name) {
			v.add("kuberouter.extraArgs", name, "a kube-router flag name without the leading --, e.g. bgp-graceful-restart")
		}
		if slices.Contains(renderedKubeRouterFlags, name) {
			v.add("kuberouter.extraArgs", name, "set by isthmus from the network config; change the config field instead")
		}
	}
}

func joinProviders() string {
	s := make([]string, len(Providers))
	for i, p := range Providers {
		s[i] = string(p)
	}
	return strings.Join(s, ", ")
}
