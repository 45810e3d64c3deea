package cni

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzParse: a network config never makes Parse or Validate panic; what
// Parse accepts, printed as `isthmus cni validate --print` prints it,
// parses back to the same config with the same verdict; and what Validate
// accepts renders: the conflist is JSON, and every manifest of the
// provider encodes and decodes strictly (Validate's promise to render).
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "{}", "provider: kuberouter\n", "provider: calico\n", "provider: custom\n",
		"provider: kuberouter\npodCIDR: 10.244.0.0/16\nserviceCIDR: 10.96.0.0/12\nnodes:\n  architectures: [amd64, arm64, arm]\n" +
			"kuberouter:\n  hairpin: true\n  autoMTU: false\n  mtu: 1400\n  metricsPort: 0\n  extraArgs: {bgp-holdtime: 30s}\n",
		"provider: calico\npodCIDR: 10.244.0.0/16\nserviceCIDR: 10.96.0.0/12\ndualStack:\n  enabled: true\n" +
			"  IPv6podCIDR: fd00::/108\n  IPv6serviceCIDR: fd01::/108\nnodes:\n  windows: true\ncalico:\n  mode: vxlan\n  vxlanPort: 4789\n  vxlanVNI: 4096\n  mtu: 0\n",
		"provider: calico\ncalico: {mode: bird, overlay: Never, wireguard: true, envVars: {FELIX_X: 1}, ipAutodetectionMethod: can-reach=10.0.0.1}\n",
		"provider: calico\ncalico: {mode: ipip, overlay: CrossSubnet, mtu: 1440}\nimages: {pullPolicy: Always, calicoNode: x/y:z}\n",
		"podCIDR: fd00::/48\nserviceCIDR: fd01::/108\nnodeCIDRMaskSizeIPv6: 64\n", "clusterDomain: example.org\nnodeCIDRMaskSize: 26\n",
		"PROVIDER: calico\n", "podcidr: 10.1.0.0/16\n", "spec:\n  network:\n    provider: calico\n", "provider: a\nprovider: b\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		verdict := c.Validate()
		printed, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("%q: print: %v", data, err)
		}
		again, err := Parse(printed)
		if err != nil {
			t.Fatalf("%q parses, its printed form\n%s\ndoes not: %v", data, printed, err)
		}
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("%q parses to\n%+v\nits printed form to\n%+v", data, c, again)
		}
		if v := again.Validate(); errString(v) != errString(verdict) {
			t.Fatalf("%q: verdict %v, of its printed form %v", data, verdict, v)
		}
		if verdict == nil {
			checkRenders(t, data, c)
		}
	})
}

func checkRenders(t *testing.T, data []byte, c Config) {
	conf, err := c.Conflist(NodeOptions{})
	if errors.Is(err, ErrCustomProvider) {
		return
	}
	if err != nil {
		t.Fatalf("%q is valid, but its conflist fails: %v", data, err)
	}
	if !json.Valid(conf.Bytes) {
		t.Fatalf("%q: the conflist is not JSON:\n%s", data, conf.Bytes)
	}
	stacks, err := c.Stacks()
	if err != nil {
		t.Fatalf("%q is valid, but its manifests fail: %v", data, err)
	}
	for _, s := range stacks {
		if s.Name == StackCalicoCRDs {
			continue // the same for every config
		}
		for _, f := range s.Files {
			if _, err := f.Encode(); err != nil {
				t.Fatalf("%q is valid, but manifest %s/%s fails: %v", data, s.Name, f.Name, err)
			}
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
