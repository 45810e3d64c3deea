package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/containernetworking/cni/libcni"
)

// CNIVersion is the CNI spec version of every rendered conflist.
const CNIVersion = "1.0.0"

// Conflist file names and network names, as the runtimes see them.
const (
	KubeRouterConflist = "10-kuberouter.conflist"
	CalicoConflist     = "10-calico.conflist"
	KubeRouterNetwork  = "kubernetes"
	CalicoNetwork      = "k8s-pod-network"
	KubeBridge         = "kube-bridge"
)

// ErrCustomProvider is returned where provider custom has nothing to
// render: the pod network is the user's.
var ErrCustomProvider = errors.New("provider custom: isthmus renders no pod network, the CNI config and manifests are the user's")

// NodeOptions are the per-node values of a conflist.
type NodeOptions struct {
	// PodCIDR is this node's slice of the pod network (kube-router's
	// host-local IPAM). Zero: the conflist has no subnet, and kube-router
	// fills in the node's spec.podCIDR when it starts (--enable-cni).
	PodCIDR netip.Prefix
	// NodeName is the Kubernetes node name for Calico's plugin. Empty: the
	// plugin reads /var/lib/calico/nodename, which calico-node writes.
	NodeName string
}

// Conflist is a rendered CNI network configuration list.
type Conflist struct {
	FileName string // e.g. 10-kuberouter.conflist
	Bytes    []byte // JSON, newline-terminated
}

// Conflist renders the node's CNI conflist for c's provider (defaults
// filled). c must be valid. It returns ErrCustomProvider for provider custom.
func (c *Config) Conflist(n NodeOptions) (Conflist, error) {
	d := c.withDefaults()
	c = &d
	var (
		list any
		name string
		err  error
	)
	switch c.Provider {
	case KubeRouter:
		name = KubeRouterConflist
		list, err = c.kubeRouterConflist(n)
	case Calico:
		name = CalicoConflist
		list = c.calicoConflist(n.NodeName, strconv.Itoa(c.calicoMTU()), c.Calico.CNIKubeconfig)
	case Custom:
		return Conflist{}, ErrCustomProvider
	default:
		return Conflist{}, fmt.Errorf("provider %q: allowed: %s", c.Provider, joinProviders())
	}
	if err != nil {
		return Conflist{}, err
	}
	data, err := marshalConflist(list)
	if err != nil {
		return Conflist{}, err
	}
	return Conflist{FileName: name, Bytes: data}, nil
}

func marshalConflist(list any) ([]byte, error) {
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode conflist: %w", err)
	}
	data = append(data, '\n')
	// What a runtime will parse: refuse to write what libcni would reject.
	if _, err := libcni.ConfListFromBytes(data); err != nil {
		return nil, fmt.Errorf("rendered conflist does not parse with libcni: %w", err)
	}
	return data, nil
}

// The kube-router conflist: bridge (with host-local IPAM) then portmap, as
// kube-router's own --enable-cni setup expects it.
type conflistJSON struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []any  `json:"plugins"`
}

type bridgeJSON struct {
	Type             string   `json:"type"`
	Bridge           string   `json:"bridge"`
	IsDefaultGateway bool     `json:"isDefaultGateway"`
	HairpinMode      bool     `json:"hairpinMode"`
	IPMasq           bool     `json:"ipMasq"`
	MTU              int      `json:"mtu,omitempty"`
	IPAM             ipamJSON `json:"ipam"`
}

type ipamJSON struct {
	Type   string        `json:"type"`
	Ranges [][]rangeJSON `json:"ranges,omitempty"`
}

type rangeJSON struct {
	Subnet string `json:"subnet"`
}

type portmapJSON struct {
	Type         string          `json:"type"`
	SNAT         *bool           `json:"snat,omitempty"`
	Capabilities map[string]bool `json:"capabilities"`
}

func (c *Config) kubeRouterConflist(n NodeOptions) (conflistJSON, error) {
	k := c.KubeRouter
	br := bridgeJSON{
		Type:             "bridge",
		Bridge:           KubeBridge,
		IsDefaultGateway: true,
		HairpinMode:      k.Hairpin,
		IPMasq:           k.IPMasq,
		IPAM:             ipamJSON{Type: "host-local"},
	}
	if !*k.AutoMTU {
		br.MTU = k.MTU
	}
	if n.PodCIDR.IsValid() {
		if err := c.checkNodePodCIDR(n.PodCIDR); err != nil {
			return conflistJSON{}, err
		}
		br.IPAM.Ranges = [][]rangeJSON{{{Subnet: n.PodCIDR.String()}}}
	}
	snat := true
	return conflistJSON{
		CNIVersion: CNIVersion,
		Name:       KubeRouterNetwork,
		Plugins: []any{br, portmapJSON{
			Type:         "portmap",
			SNAT:         &snat,
			Capabilities: map[string]bool{"portMappings": true},
		}},
	}, nil
}

// checkNodePodCIDR checks that a node's pod subnet is one slice of the
// cluster's pod network.
func (c *Config) checkNodePodCIDR(p netip.Prefix) error {
	cluster, err := netip.ParsePrefix(c.PodCIDR)
	if err != nil {
		return fmt.Errorf("podCIDR %q: %w", c.PodCIDR, err)
	}
	size := c.NodeCIDRMaskSize
	if cluster.Addr().Is6() {
		size = c.NodeCIDRMaskSizeIPv6
	}
	if p.Masked() != p || p.Bits() != size || !cluster.Contains(p.Addr()) {
		return &FieldError{Field: "node pod CIDR", Value: p, Msg: fmt.Sprintf("must be a /%d inside podCIDR %s (the node's spec.podCIDR)", size, cluster)}
	}
	return nil
}

// The Calico conflist: the calico plugin with calico-ipam, then portmap, as
// Calico's own manifests install it. No bandwidth plugin: since v3.30
// Felix applies the pods' bandwidth annotations itself, and calico/cni no
// longer installs the plugin's binary.
type calicoJSON struct {
	Type          string            `json:"type"`
	LogLevel      string            `json:"log_level"`
	LogFilePath   string            `json:"log_file_path"`
	DatastoreType string            `json:"datastore_type"`
	Nodename      string            `json:"nodename,omitempty"`
	MTU           json.RawMessage   `json:"mtu"`
	IPAM          calicoIPAMJSON    `json:"ipam"`
	Policy        map[string]string `json:"policy"`
	Kubernetes    map[string]string `json:"kubernetes"`
}

type calicoIPAMJSON struct {
	Type       string `json:"type"`
	AssignIPv4 string `json:"assign_ipv4"`
	AssignIPv6 string `json:"assign_ipv6"`
}

func (c *Config) calicoConflist(nodeName, mtu, kubeconfig string) conflistJSON {
	v4, v6 := "true", "false"
	if p, err := netip.ParsePrefix(c.PodCIDR); err == nil && p.Addr().Is6() {
		v4, v6 = "false", "true"
	}
	if c.DualStack.Enabled {
		v4, v6 = "true", "true"
	}
	snat := true
	return conflistJSON{
		CNIVersion: CNIVersion,
		Name:       CalicoNetwork,
		Plugins: []any{
			calicoJSON{
				Type:          "calico",
				LogLevel:      "info",
				LogFilePath:   "/var/log/calico/cni/cni.log",
				DatastoreType: "kubernetes",
				Nodename:      nodeName,
				MTU:           json.RawMessage(mtu),
				IPAM:          calicoIPAMJSON{Type: "calico-ipam", AssignIPv4: v4, AssignIPv6: v6},
				Policy:        map[string]string{"type": "k8s"},
				Kubernetes:    map[string]string{"kubeconfig": kubeconfig},
			},
			portmapJSON{Type: "portmap", SNAT: &snat, Capabilities: map[string]bool{"portMappings": true}},
		},
	}
}

// calicoTemplateConflist is the conflist of calico-config's
// cni_network_config: Calico's install-cni container replaces the
// placeholders on each node (node name, detected MTU, its kubeconfig).
func (c *Config) calicoTemplateConflist() (string, error) {
	data, err := json.MarshalIndent(c.calicoConflist("__KUBERNETES_NODE_NAME__", "0", "__KUBECONFIG_FILEPATH__"), "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode calico conflist template: %w", err)
	}
	// The MTU placeholder is a bare token in Calico's template, not a string.
	data = bytes.Replace(data, []byte(`"mtu": 0`), []byte(`"mtu": __CNI_MTU__`), 1)
	return string(data) + "\n", nil
}

// calicoMTU is the pod MTU: the configured one, or the largest that fits a
// 1500-byte node network under the encapsulation in use.
func (c *Config) calicoMTU() int {
	k := c.Calico
	if k.MTU != 0 {
		return k.MTU
	}
	v6 := c.DualStack.Enabled
	if p, err := netip.ParsePrefix(c.PodCIDR); err == nil && p.Addr().Is6() {
		v6 = true
	}
	mtu := 1500
	switch k.Mode {
	case "vxlan":
		mtu = 1450
		if v6 {
			mtu = 1430
		}
	case "ipip":
		mtu = 1480
	}
	if k.Wireguard {
		wg := 1440
		if v6 {
			wg = 1420
		}
		mtu = min(mtu, wg)
	}
	return mtu
}
