package cni

import (
	"fmt"

	"isthmus.dev/certs/configfile"
)

// The network config is the contents of a k0s ClusterConfig's
// spec.network. Keys refused because they belong to the rest of that file
// get a hint saying so.
var k0sHints = map[string]string{
	"apiVersion": k0sWrapperHint,
	"kind":       k0sWrapperHint,
	"metadata":   k0sWrapperHint,
	"spec":       k0sWrapperHint,
	"network":    k0sWrapperHint,
	"kubeProxy": "k0s's spec.network.kubeProxy is not part of the pod network isthmus renders; " +
		"leave it in k0s's ClusterConfig and remove it here",
	"nodeLocalLoadBalancing": "k0s's spec.network.nodeLocalLoadBalancing is not part of the pod network isthmus renders; " +
		"leave it in k0s's ClusterConfig and remove it here",
	"controlPlaneLoadBalancing": "k0s's spec.network.controlPlaneLoadBalancing is not part of the pod network isthmus renders; " +
		"leave it in k0s's ClusterConfig and remove it here",
	"calico.flexVolumeDriverPath": "k0s's calico.flexVolumeDriverPath is not rendered by isthmus (Calico no longer needs it); remove it",
}

const k0sWrapperHint = "this looks like a k0s ClusterConfig (or its spec: block): only what is under spec.network " +
	"belongs in the network config (provider, podCIDR, serviceCIDR, calico, kuberouter, ...): " +
	"drop the lines above it and unindent the rest"

// addK0sHints adds k0sHints to the unknown keys of err; the hint about the
// wrapper is given once, the other wrapper keys point to it.
func addK0sHints(err error) {
	wrapperLine := 0
	for _, k := range configfile.KeyErrors(err) {
		h, ok := k0sHints[k.Path]
		if !ok || k.Problem != configfile.Unknown {
			continue
		}
		if h == k0sWrapperHint {
			if wrapperLine > 0 {
				h = fmt.Sprintf("a key of a k0s ClusterConfig too (see line %d)", wrapperLine)
			} else {
				wrapperLine = max(k.Line, 1)
			}
		}
		k.Hint = h
	}
}
