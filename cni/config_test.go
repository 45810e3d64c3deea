package cni_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"isthmus.dev/certs/configfile"
	"isthmus.dev/cni"
)

// A network config is decoded as Kubernetes decodes strictly: what a new
// user gets wrong is refused with the key, its line, and what to write.
func TestParseRefusesWithKeyLineAndHint(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"upper case", "PROVIDER: calico\n", []string{
			`line 1: unknown key "PROVIDER": keys are case-sensitive: did you mean "provider"?`}},
		{"lower case", "provider: calico\npodcidr: 10.1.0.0/16\n", []string{
			`line 2: unknown key "podcidr": keys are case-sensitive: did you mean "podCIDR"?`}},
		{"typo inside a block", "provider: calico\ncalico:\n  vxlanPrt: 4790\n", []string{
			`line 3: unknown key "calico.vxlanPrt": did you mean "vxlanPort"?`}},
		{"duplicate", "provider: calico\npodCIDR: 10.1.0.0/16\nprovider: kuberouter\n", []string{
			`line 3: duplicate key "provider": first at line 1`}},
		{"wrong type", "calico:\n  mtu: auto\n", []string{
			`line 2: key "calico.mtu": got a string, want a whole number`}},
		{"k0s spec block", "spec:\n  network:\n    provider: calico\n", []string{
			`line 1: unknown key "spec": this looks like a k0s ClusterConfig (or its spec: block): only what is under spec.network ` +
				`belongs in the network config (provider, podCIDR, serviceCIDR, calico, kuberouter, ...): ` +
				`drop the lines above it and unindent the rest`}},
		{"k0s network wrapper", "network:\n  provider: calico\n  podCIDR: 10.244.0.0/16\n", []string{
			`line 1: unknown key "network": this looks like a k0s ClusterConfig`}},
		{"k0s key isthmus leaves to k0s", "provider: calico\nkubeProxy:\n  mode: iptables\n", []string{
			`line 2: unknown key "kubeProxy": k0s's spec.network.kubeProxy is not part of the pod network isthmus renders; ` +
				`leave it in k0s's ClusterConfig and remove it here`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cni.Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("errors:\n%v\nwant:\n%s", err, strings.Join(tc.want, "\n"))
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("error %d:\n%s\nwant:\n%s", i, got[i], tc.want[i])
				}
			}
			if !errors.Is(err, configfile.ErrStrict) {
				t.Errorf("%v is not a strict decoding error", err)
			}
		})
	}
}

// A whole k0s ClusterConfig pasted as the network config: every key of the
// wrapper is named once, at its line, the first with the hint and the
// others pointing to it; nothing under them is reported (it is not read).
func TestLoadOfAK0sClusterConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k0s.yaml")
	k0s := `apiVersion: k0s.k0sproject.io/v1beta1
kind: ClusterConfig
metadata:
  name: k0s
spec:
  network:
    provider: calico
    podCIDR: 10.244.0.0/16
`
	if err := os.WriteFile(path, []byte(k0s), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := cni.Load(path)
	if err == nil {
		t.Fatal("a k0s ClusterConfig was accepted as a network config")
	}
	keys := configfile.KeyErrors(err)
	var got []string
	for i, k := range keys {
		got = append(got, k.Path)
		want := "only what is under spec.network"
		if i > 0 {
			want = "a key of a k0s ClusterConfig too (see line 1)"
		}
		if !strings.Contains(k.Hint, want) {
			t.Errorf("%s: hint %q, want %q", k.Path, k.Hint, want)
		}
	}
	if strings.Join(got, " ") != "apiVersion kind metadata spec" {
		t.Errorf("refused keys %v, want apiVersion kind metadata spec", got)
	}
	if !strings.HasPrefix(err.Error(), "network config "+path+":\nline 1: unknown key \"apiVersion\"") {
		t.Errorf("error:\n%v", err)
	}
}

// What k0s's own decoding accepts keeps working: numbers and booleans in
// maps of strings, and JSON.
func TestParseKeepsWhatK0sAccepts(t *testing.T) {
	c, err := cni.Parse([]byte("provider: calico\ncalico:\n  envVars:\n    FELIX_IPV6SUPPORT: false\n    FELIX_LOGSEVERITYSCREEN: info\n    FELIX_HEALTHPORT: 9099\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"FELIX_IPV6SUPPORT": "false", "FELIX_LOGSEVERITYSCREEN": "info", "FELIX_HEALTHPORT": "9099"}
	for k, v := range want {
		if c.Calico.EnvVars[k] != v {
			t.Errorf("envVars[%s] = %q, want %q", k, c.Calico.EnvVars[k], v)
		}
	}
	if c, err := cni.Parse([]byte(`{"provider": "kuberouter", "kuberouter": {"extraArgs": {"v": 2}}}`)); err != nil || c.KubeRouter.ExtraArgs["v"] != "2" {
		t.Fatalf("JSON: %+v, %v", c.KubeRouter, err)
	}
}
