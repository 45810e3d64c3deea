package deploy

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/diff"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
	"isthmus.dev/isthmus/manifests"
)

// settings are one deployment, said once and turned into both the flags
// of `isthmus manifests` and the chart's values.
type settings struct {
	name         string
	addresses    []string
	serverCount  int
	leases       bool
	auth         string
	namespace    string
	agentCA      bool
	certSecret   string
	hostIPFamily string
	repo, tag    string // empty: the defaults
	cpu, memory  string // empty: the defaults
}

func cases() []settings {
	return []settings{
		{name: "defaults", addresses: []string{"192.0.2.10"}},
		{name: "token-count", addresses: []string{"konnectivity.example.internal"}, serverCount: 3, auth: "token",
			repo: "registry.example.internal/isthmus", tag: "v1.2.3"},
		{name: "token-leases", addresses: []string{"lb.example.internal"}, leases: true, namespace: "isthmus-system", agentCA: true},
		{name: "certificates-list", addresses: []string{"2001:db8::10", "2001:db8::11"}, serverCount: 2, auth: "certificates",
			hostIPFamily: "ipv6", certSecret: "agent-tls", cpu: "100m", memory: "128Mi"},
		{name: "certificates-leases", addresses: []string{"lb.example.internal"}, leases: true, auth: "certificates", agentCA: true},
	}
}

// flags are the command line of `isthmus manifests` (without --out).
func (s settings) flags(caFile string) []string {
	f := []string{"manifests", "--server-address", strings.Join(s.addresses, ",")}
	add := func(name, v string) {
		if v != "" {
			f = append(f, "--"+name, v)
		}
	}
	if s.serverCount > 0 {
		add("server-count", strconv.Itoa(s.serverCount))
	}
	if s.leases {
		f = append(f, "--leases")
	}
	add("auth", s.auth)
	add("namespace", s.namespace)
	add("agent-cert-secret", s.certSecret)
	add("host-ip-family", s.hostIPFamily)
	add("agent-cpu-request", s.cpu)
	add("agent-memory-request", s.memory)
	if s.repo != "" {
		add("image", s.repo+":"+s.tag)
	}
	if s.agentCA {
		add("agent-ca-file", caFile)
	}
	return f
}

// values are the chart's values for s: only what s sets, the chart's
// defaults for the rest.
func (s settings) values(caPEM string) map[string]any {
	v := map[string]any{"serverAddresses": s.addresses}
	set := func(key string, val any, present bool) {
		if present {
			v[key] = val
		}
	}
	set("serverCount", s.serverCount, s.serverCount > 0)
	set("leases", true, s.leases)
	set("auth", s.auth, s.auth != "")
	set("namespace", s.namespace, s.namespace != "")
	set("agentCertSecret", s.certSecret, s.certSecret != "")
	set("hostIPFamily", s.hostIPFamily, s.hostIPFamily != "")
	set("agentCA", caPEM, s.agentCA)
	set("image", map[string]any{"repository": s.repo, "tag": s.tag, "pullPolicy": "IfNotPresent"}, s.repo != "")
	set("agentResources", map[string]any{"requests": map[string]any{"cpu": s.cpu, "memory": s.memory}}, s.cpu != "")
	return v
}

func chartDir(t *testing.T) string {
	return filepath.Join(harness.RepoDir(t), "deploy", "helm", "isthmus")
}

// writeCA writes a CA certificate (for agentCA) and returns its path and PEM.
func writeCA(t *testing.T) (string, string) {
	t.Helper()
	ca, err := certs.NewCA("isthmus deploy test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent-ca.crt")
	if err := os.WriteFile(path, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, string(ca.CertPEM)
}

func writeValues(t *testing.T, v map[string]any) string {
	t.Helper()
	b, err := json.Marshal(v) // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runIsthmus runs the isthmus command under test in dir.
func runIsthmus(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, isthmusBin, args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("isthmus %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// decode decodes a YAML stream strictly into objects keyed
// "Kind namespace/name".
func decode(t *testing.T, what string, b []byte) map[string]runtime.Object {
	t.Helper()
	objs, err := manifests.DecodeStrict(b)
	if err != nil {
		t.Fatalf("%s does not decode strictly with client-go's scheme: %v\n%s", what, err, b)
	}
	out := map[string]runtime.Object{}
	for _, o := range objs {
		m, ok := o.(interface {
			GetName() string
			GetNamespace() string
		})
		if !ok {
			t.Fatalf("%s: %T has no metadata", what, o)
		}
		key := o.GetObjectKind().GroupVersionKind().Kind + " " + m.GetNamespace() + "/" + m.GetName()
		if _, dup := out[key]; dup {
			t.Fatalf("%s: %s twice", what, key)
		}
		out[key] = o
	}
	return out
}

// compare fails t unless a and b hold the same objects, semantically
// equal, with a diff of each that is not.
func compare(t *testing.T, aName string, a map[string]runtime.Object, bName string, b map[string]runtime.Object) {
	t.Helper()
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		x, inA := a[k]
		y, inB := b[k]
		switch {
		case !inA:
			t.Errorf("%s: only %s renders it", k, bName)
		case !inB:
			t.Errorf("%s: only %s renders it", k, aName)
		case !apiequality.Semantic.DeepEqual(x, y):
			t.Errorf("%s differs (- %s, + %s):\n%s", k, aName, bName, diff.Diff(x, y))
		}
	}
}

// TestChartMatchesManifests is done-when 1 of issue 10: for each setting,
// `isthmus manifests` and `helm template` render the same cluster
// objects, each decoding strictly; `helm lint --strict` passes.
func TestChartMatchesManifests(t *testing.T) {
	helm := harness.HelmBinary(t)
	caFile, caPEM := writeCA(t)
	for _, s := range cases() {
		t.Run(s.name, func(t *testing.T) {
			dir := t.TempDir()
			cli := decode(t, "isthmus manifests --out -", runIsthmus(t, dir, append(s.flags(caFile), "--out", "-")...))
			values := writeValues(t, s.values(caPEM))
			out, err := harness.Helm(t, helm, "template", "isthmus", chartDir(t), "-f", values)
			if err != nil {
				t.Fatal(err)
			}
			chart := decode(t, "helm template", []byte(out))
			compare(t, "isthmus manifests", cli, "helm template", chart)
			if len(cli) < 2 { // at least the ServiceAccount and the DaemonSet
				t.Errorf("only %d objects rendered", len(cli))
			}

			// The directory's cluster.yaml holds the same objects.
			runIsthmus(t, dir, append(s.flags(caFile), "--out", "out")...)
			b, err := os.ReadFile(filepath.Join(dir, "out", manifests.FileCluster))
			if err != nil {
				t.Fatal(err)
			}
			compare(t, "--out -", cli, "--out DIR", decode(t, manifests.FileCluster, b))

			if _, err := harness.Helm(t, helm, "lint", "--strict", chartDir(t), "-f", values); err != nil {
				t.Errorf("helm lint: %v", err)
			}
		})
	}
}

// TestChartSchemaRefuses: values.schema.json and the chart's own checks
// refuse unknown keys, wrong types and what `isthmus manifests` refuses.
func TestChartSchemaRefuses(t *testing.T) {
	helm := harness.HelmBinary(t)
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"no address", map[string]any{}, "serverAddresses"},
		{"unknown key", map[string]any{"serverAddresses": []string{"a.example"}, "serverAdresses": []string{"typo"}}, "serverAdresses"},
		{"unknown nested key", map[string]any{"serverAddresses": []string{"a.example"}, "image": map[string]any{"repository": "r", "tag": "", "pullPolicy": "Always", "digest": "x"}}, "digest"},
		{"port as string", map[string]any{"serverAddresses": []string{"a.example"}, "agentPort": "8132"}, "agentPort"},
		{"port out of range", map[string]any{"serverAddresses": []string{"a.example"}, "agentPort": 70000}, "agentPort"},
		{"address with port", map[string]any{"serverAddresses": []string{"10.0.0.1:8132"}}, "serverAddresses"},
		{"auth", map[string]any{"serverAddresses": []string{"a.example"}, "auth": "none"}, "auth"},
		{"leases as string", map[string]any{"serverAddresses": []string{"a.example"}, "leases": "yes"}, "leases"},
		{"CA not PEM", map[string]any{"serverAddresses": []string{"a.example"}, "agentCA": "hello"}, "agentCA"},
		{"leases with a list", map[string]any{"serverAddresses": []string{"a.example", "b.example"}, "leases": true}, "ONE address"},
		{"leases with a count", map[string]any{"serverAddresses": []string{"a.example"}, "leases": true, "serverCount": 2}, "with leases"},
		{"count against list", map[string]any{"serverAddresses": []string{"a.example", "b.example"}, "serverCount": 3}, "2 serverAddresses"},
	} {
		out, err := harness.Helm(t, helm, "template", "isthmus", chartDir(t), "-f", writeValues(t, tc.values))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want a refusal naming %q, got %v\n%s", tc.name, tc.want, err, out)
		}
	}
}
