// Package cni is the pod network behind the agents: a network config in the
// shape of k0s's spec.network (provider kuberouter, calico or custom), its
// validation against each provider's limits, the rendering of the CNI
// conflist and of the provider's Kubernetes manifests into a manifest
// directory (one folder per stack, written atomically), and the provider
// lock that refuses a provider change once a cluster has been initialised.
package cni

import (
	"fmt"
	"os"
	"slices"

	"isthmus.dev/certs/configfile"
)

// Provider names the pod network implementation.
type Provider string

// The providers.
const (
	KubeRouter Provider = "kuberouter"
	Calico     Provider = "calico"
	Custom     Provider = "custom"
)

// Providers lists every accepted provider, for messages and flag help.
var Providers = []Provider{KubeRouter, Calico, Custom}

// Config is the network config, in the shape of k0s's spec.network. Load
// fills the defaults of every field left out; Validate checks the result.
type Config struct {
	// Provider is kuberouter, calico or custom. Default kuberouter.
	Provider Provider `json:"provider,omitempty"`
	// PodCIDR is the cluster's pod network (IPv4, or IPv6 for a single-stack
	// IPv6 cluster). Default 10.244.0.0/16.
	PodCIDR string `json:"podCIDR,omitempty"`
	// ServiceCIDR is the service network, same family as PodCIDR.
	// Default 10.96.0.0/12.
	ServiceCIDR string `json:"serviceCIDR,omitempty"`
	// ClusterDomain is the cluster's DNS domain. Default cluster.local.
	ClusterDomain string `json:"clusterDomain,omitempty"`
	// NodeCIDRMaskSize is the prefix length of each node's slice of an IPv4
	// PodCIDR (kube-controller-manager's --node-cidr-mask-size-ipv4).
	// Default 24.
	NodeCIDRMaskSize int `json:"nodeCIDRMaskSize,omitempty"`
	// NodeCIDRMaskSizeIPv6 is the same for an IPv6 pod network. Default 118
	// (1024 addresses per node out of the default fd00::/108).
	NodeCIDRMaskSizeIPv6 int `json:"nodeCIDRMaskSizeIPv6,omitempty"`
	// DualStack adds an IPv6 pod and service network. Off by default.
	DualStack DualStack `json:"dualStack,omitempty"`
	// Nodes describes the workers the pod network must run on.
	Nodes Nodes `json:"nodes,omitempty"`
	// Calico holds Calico's settings; only with provider calico. Nil until
	// Load fills it for that provider.
	Calico *CalicoConfig `json:"calico,omitempty"`
	// KubeRouter holds kube-router's settings; only with provider
	// kuberouter. Nil until Load fills it for that provider.
	KubeRouter *KubeRouterConfig `json:"kuberouter,omitempty"`
	// Images are the container images of the rendered manifests.
	Images Images `json:"images,omitempty"`
}

// DualStack is k0s's spec.network.dualStack.
type DualStack struct {
	// Enabled turns dual-stack on (Calico only). Default false.
	Enabled bool `json:"enabled,omitempty"`
	// IPv6PodCIDR is the IPv6 pod network. Default fd00::/108 when enabled.
	IPv6PodCIDR string `json:"IPv6podCIDR,omitempty"`
	// IPv6ServiceCIDR is the IPv6 service network. Default fd01::/108 when
	// enabled.
	IPv6ServiceCIDR string `json:"IPv6serviceCIDR,omitempty"`
}

// Nodes describes the worker nodes, for the provider limits.
type Nodes struct {
	// Architectures are the CPU architectures of the workers, as GOARCH
	// names: amd64, arm64, arm (armv7), ppc64le, s390x, riscv64.
	// Default [amd64, arm64].
	Architectures []string `json:"architectures,omitempty"`
	// Windows is true when the cluster has Windows workers. Default false.
	Windows bool `json:"windows,omitempty"`
}

// CalicoConfig is k0s's spec.network.calico.
type CalicoConfig struct {
	// Mode is the data plane: vxlan (default), ipip or bird (plain BGP
	// routes, no overlay).
	Mode string `json:"mode,omitempty"`
	// Overlay says when the vxlan or ipip overlay is used: Always (default),
	// CrossSubnet or Never. Mode bird requires Never (the default there).
	Overlay string `json:"overlay,omitempty"`
	// VXLANPort is the UDP port of the VXLAN overlay. Default 4789.
	VXLANPort int `json:"vxlanPort,omitempty"`
	// VXLANVNI is the VXLAN network identifier. Default 4096.
	VXLANVNI int `json:"vxlanVNI,omitempty"`
	// MTU of the pod interfaces; 0 (default) lets Calico detect it.
	MTU int `json:"mtu,omitempty"`
	// Wireguard encrypts pod traffic between nodes. Default false.
	Wireguard bool `json:"wireguard,omitempty"`
	// IPAutodetectionMethod is calico-node's IP_AUTODETECTION_METHOD.
	// Default first-found.
	IPAutodetectionMethod string `json:"ipAutodetectionMethod,omitempty"`
	// IPv6AutodetectionMethod is calico-node's IP6_AUTODETECTION_METHOD
	// (dual-stack). Default first-found.
	IPv6AutodetectionMethod string `json:"ipV6AutodetectionMethod,omitempty"`
	// EnvVars are extra environment variables of calico-node; they win over
	// the rendered ones.
	EnvVars map[string]string `json:"envVars,omitempty"`
	// CNIKubeconfig is the kubeconfig path the calico CNI plugin reads on
	// the node. Default /etc/cni/net.d/calico-kubeconfig.
	CNIKubeconfig string `json:"cniKubeconfig,omitempty"`
}

// KubeRouterConfig is k0s's spec.network.kuberouter.
type KubeRouterConfig struct {
	// Hairpin lets a pod reach itself through a service (hairpin mode on
	// its bridge port). Default false: kube-router does not turn it on
	// unless asked.
	Hairpin bool `json:"hairpin,omitempty"`
	// IPMasq masquerades pod traffic leaving the pod network (the bridge
	// plugin's ipMasq). Default false.
	IPMasq bool `json:"ipMasq,omitempty"`
	// AutoMTU lets kube-router set the MTU from the node's interface.
	// Default true; MTU must then be 0.
	AutoMTU *bool `json:"autoMTU,omitempty"`
	// MTU of the pod interfaces when AutoMTU is false (576 to 9000).
	MTU int `json:"mtu,omitempty"`
	// MetricsPort is kube-router's metrics port; 0 turns metrics off.
	// Default 8080.
	MetricsPort *int `json:"metricsPort,omitempty"`
	// ExtraArgs are more kube-router flags, name without "--" to value.
	ExtraArgs map[string]string `json:"extraArgs,omitempty"`
}

// Images are the container images of the rendered manifests. Each empty
// one takes its Default*Image.
type Images struct {
	KubeRouter            string `json:"kubeRouter,omitempty"`            // DefaultKubeRouterImage
	CNIPlugins            string `json:"cniPlugins,omitempty"`            // DefaultCNIPluginsImage: holds /opt/cni/bin/{bridge,host-local,loopback,portmap}
	CalicoNode            string `json:"calicoNode,omitempty"`            // DefaultCalicoNodeImage
	CalicoCNI             string `json:"calicoCNI,omitempty"`             // DefaultCalicoCNIImage
	CalicoKubeControllers string `json:"calicoKubeControllers,omitempty"` // DefaultCalicoKCImage
	// PullPolicy is IfNotPresent (default), Always or Never.
	PullPolicy string `json:"pullPolicy,omitempty"`
}

// The defaults.
const (
	DefaultPodCIDR         = "10.244.0.0/16"
	DefaultServiceCIDR     = "10.96.0.0/12"
	DefaultIPv6PodCIDR     = "fd00::/108"
	DefaultIPv6ServiceCIDR = "fd01::/108"
	DefaultClusterDomain   = "cluster.local"
	DefaultVXLANPort       = 4789
	DefaultVXLANVNI        = 4096
	DefaultKubeRouterImage = "docker.io/cloudnativelabs/kube-router:v2.5.0"
	DefaultCNIPluginsImage = "quay.io/k0sproject/cni-node:1.7.1-k0s.0"
	DefaultCalicoVersion   = "v3.31.0"
	DefaultCalicoNodeImage = "quay.io/calico/node:" + DefaultCalicoVersion
	DefaultCalicoCNIImage  = "quay.io/calico/cni:" + DefaultCalicoVersion
	DefaultCalicoKCImage   = "quay.io/calico/kube-controllers:" + DefaultCalicoVersion
	DefaultMetricsPort     = 8080
	defaultCNIKubeconfig   = "/etc/cni/net.d/calico-kubeconfig"
)

// DefaultConfig is the config of an empty file: kube-router on
// 10.244.0.0/16, services on 10.96.0.0/12.
func DefaultConfig() Config {
	var c Config
	c.setDefaults()
	return c
}

// Load reads a YAML (or JSON) network config strictly: keys are
// case-sensitive, and an unknown, misspelt or duplicate key is an error
// naming the key and its line (a *configfile.KeyError). The defaults are
// filled in; Validate is not called.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read network config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		sep := " "
		if len(configfile.KeyErrors(err)) > 1 {
			sep = "\n"
		}
		return Config{}, fmt.Errorf("network config %s:%s%w", path, sep, err)
	}
	return c, nil
}

// Parse is Load for bytes.
func Parse(data []byte) (Config, error) {
	var c Config
	if err := configfile.Decode(data, &c); err != nil {
		addK0sHints(err)
		return Config{}, err
	}
	c.setDefaults()
	return c, nil
}

// withDefaults is a copy of c with every default filled; the caller's
// provider blocks are copied, never changed. Validate, Conflist and Stacks
// work on it, so a Config built in Go needs no Load.
func (c *Config) withDefaults() Config {
	d := *c
	d.Nodes.Architectures = slices.Clone(c.Nodes.Architectures)
	if c.Calico != nil {
		k := *c.Calico
		d.Calico = &k
	}
	if c.KubeRouter != nil {
		k := *c.KubeRouter
		d.KubeRouter = &k
	}
	d.setDefaults()
	return d
}

// setDefaults fills every field left at its zero value. A provider block
// given for another provider is kept as given, so Validate can refuse it.
func (c *Config) setDefaults() {
	if c.Provider == "" {
		c.Provider = KubeRouter
	}
	setString(&c.PodCIDR, DefaultPodCIDR)
	setString(&c.ServiceCIDR, DefaultServiceCIDR)
	setString(&c.ClusterDomain, DefaultClusterDomain)
	setInt(&c.NodeCIDRMaskSize, 24)
	setInt(&c.NodeCIDRMaskSizeIPv6, 118)
	if c.DualStack.Enabled {
		setString(&c.DualStack.IPv6PodCIDR, DefaultIPv6PodCIDR)
		setString(&c.DualStack.IPv6ServiceCIDR, DefaultIPv6ServiceCIDR)
	}
	if len(c.Nodes.Architectures) == 0 {
		c.Nodes.Architectures = []string{"amd64", "arm64"}
	}
	switch c.Provider {
	case Calico:
		if c.Calico == nil {
			c.Calico = &CalicoConfig{}
		}
		c.Calico.setDefaults()
	case KubeRouter:
		if c.KubeRouter == nil {
			c.KubeRouter = &KubeRouterConfig{}
		}
		c.KubeRouter.setDefaults()
	}
	im := &c.Images
	setString(&im.KubeRouter, DefaultKubeRouterImage)
	setString(&im.CNIPlugins, DefaultCNIPluginsImage)
	setString(&im.CalicoNode, DefaultCalicoNodeImage)
	setString(&im.CalicoCNI, DefaultCalicoCNIImage)
	setString(&im.CalicoKubeControllers, DefaultCalicoKCImage)
	setString(&im.PullPolicy, "IfNotPresent")
}

func (c *CalicoConfig) setDefaults() {
	setString(&c.Mode, "vxlan")
	if c.Overlay == "" {
		c.Overlay = "Always"
		if c.Mode == "bird" {
			c.Overlay = "Never"
		}
	}
	setInt(&c.VXLANPort, DefaultVXLANPort)
	setInt(&c.VXLANVNI, DefaultVXLANVNI)
	setString(&c.IPAutodetectionMethod, "first-found")
	setString(&c.IPv6AutodetectionMethod, "first-found")
	setString(&c.CNIKubeconfig, defaultCNIKubeconfig)
}

func (k *KubeRouterConfig) setDefaults() {
	if k.AutoMTU == nil {
		on := true
		k.AutoMTU = &on
	}
	if k.MetricsPort == nil {
		p := DefaultMetricsPort
		k.MetricsPort = &p
	}
}

func setString(p *string, def string) {
	if *p == "" {
		*p = def
	}
}

func setInt(p *int, def int) {
	if *p == 0 {
		*p = def
	}
}
