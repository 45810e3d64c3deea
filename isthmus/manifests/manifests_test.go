package manifests_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/diff"
	"k8s.io/apiserver/pkg/apis/apiserver"

	"isthmus.dev/certs"
	"isthmus.dev/egress"
	"isthmus.dev/isthmus/manifests"
)

// variant is one set of options the tests render.
type variant struct {
	name string
	opts manifests.Options
}

func variants(t *testing.T) []variant {
	ca := testCA(t)
	return []variant{
		{"token-count", manifests.Options{ServerAddresses: []string{"konnectivity.example.internal"}, ServerCount: 3}},
		{"token-list", manifests.Options{ServerAddresses: []string{"192.0.2.10", "192.0.2.11"}, Mode: manifests.ModeHTTPConnect}},
		{"token-leases", manifests.Options{ServerAddresses: []string{"lb.example.internal"}, Leases: true, AgentCA: ca}},
		{"certificates-count", manifests.Options{ServerAddresses: []string{"192.0.2.10"}, Auth: manifests.AuthCertificates, AgentCA: ca}},
		{"certificates-leases", manifests.Options{ServerAddresses: []string{"lb.example.internal"}, Auth: manifests.AuthCertificates,
			Leases: true, Namespace: "isthmus-system", HostIPFamily: "ipv6"}},
	}
}

func testCA(t *testing.T) []byte {
	t.Helper()
	ca, err := certs.NewCA("isthmus test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca.CertPEM
}

func render(t *testing.T, o manifests.Options) *manifests.Rendered {
	t.Helper()
	r, err := manifests.Render(o)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	return r
}

// TestStrictRoundTrip: every manifest decodes strictly with client-go's
// scheme into exactly the typed objects Render returned.
func TestStrictRoundTrip(t *testing.T) {
	for _, v := range variants(t) {
		t.Run(v.name, func(t *testing.T) {
			r := render(t, v.opts)
			b, err := r.ClusterYAML()
			if err != nil {
				t.Fatal(err)
			}
			got, err := manifests.DecodeStrict(b)
			if err != nil {
				t.Fatalf("cluster.yaml: %v\n%s", err, b)
			}
			want := r.Cluster.List()
			if len(got) != len(want) {
				t.Fatalf("%d objects decoded, %d rendered", len(got), len(want))
			}
			for i := range want {
				if !apiequality.Semantic.DeepEqual(got[i], want[i]) {
					t.Errorf("object %d changed through YAML:\n%s", i, diff.Diff(want[i], got[i]))
				}
			}
			pod, err := r.ServerPodYAML()
			if err != nil {
				t.Fatal(err)
			}
			objs, err := manifests.DecodeStrict(pod)
			if err != nil || len(objs) != 1 || !apiequality.Semantic.DeepEqual(objs[0], runtime.Object(r.ServerPod)) {
				t.Fatalf("static Pod: %v\n%s", err, pod)
			}
			for _, forbidden := range []string{"status:", "creationTimestamp"} {
				if strings.Contains(string(b)+string(pod), forbidden) {
					t.Errorf("the manifests carry %q", forbidden)
				}
			}
		})
	}
}

func TestAgentDaemonSet(t *testing.T) {
	r := render(t, manifests.Options{ServerAddresses: []string{"konnectivity.example.internal"}, Image: "localhost/isthmus:v1.2.3"})
	ds := r.Cluster.AgentDaemonSet
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	if ds.Namespace != "kube-system" || ds.Name != "konnectivity-agent" || pod.ServiceAccountName != "konnectivity-agent" ||
		ds.Spec.Template.Labels["k8s-app"] != "konnectivity-agent" || ds.Spec.Selector.MatchLabels["k8s-app"] != "konnectivity-agent" {
		t.Errorf("names and labels: %+v %+v", ds.ObjectMeta, ds.Spec.Selector)
	}
	if c.Image != "localhost/isthmus:v1.2.3" || c.ImagePullPolicy != corev1.PullIfNotPresent || !slices.Equal(c.Command, []string{"/proxy-agent"}) {
		t.Errorf("image %q %q, command %q", c.Image, c.ImagePullPolicy, c.Command)
	}
	wantArgs := []string{
		"--proxy-server-host=konnectivity.example.internal", "--proxy-server-port=8132",
		"--ca-cert=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
		"--agent-identifiers=host=$(NODE_NAME)&ipv4=$(HOST_IP)",
		"--admin-server-port=8133", "--health-server-port=8134",
		"--service-account-token-path=/var/run/secrets/tokens/konnectivity-agent-token",
	}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args\n got %q\nwant %q", c.Args, wantArgs)
	}
	envs := map[string]string{}
	for _, e := range c.Env {
		envs[e.Name] = e.ValueFrom.FieldRef.FieldPath
	}
	if envs["NODE_NAME"] != "spec.nodeName" || envs["HOST_IP"] != "status.hostIP" {
		t.Errorf("downward API env: %v", envs)
	}
	tok := pod.Volumes[0].Projected.Sources[0].ServiceAccountToken
	if tok.Audience != "system:konnectivity-server" || *tok.ExpirationSeconds != 3600 || tok.Path != "konnectivity-agent-token" ||
		c.VolumeMounts[0].MountPath != manifests.TokenDir || !c.VolumeMounts[0].ReadOnly {
		t.Errorf("token projection %+v, mounts %+v", tok, c.VolumeMounts)
	}
	checkHardened(t, pod, c)
	if pod.PriorityClassName != "system-cluster-critical" || len(pod.Tolerations) != 1 ||
		pod.Tolerations[0] != (corev1.Toleration{Operator: corev1.TolerationOpExists}) {
		t.Errorf("priority %q, tolerations %+v", pod.PriorityClassName, pod.Tolerations)
	}
	if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		c.LivenessProbe.HTTPGet.Port.StrVal != "health" || c.Ports[0].ContainerPort != manifests.HealthPort || c.Ports[0].Name != "health" {
		t.Errorf("probes %+v %+v, ports %+v", c.LivenessProbe, c.ReadinessProbe, c.Ports)
	}
	if c.Resources.Requests.Cpu().String() != "50m" || c.Resources.Requests.Memory().String() != "64Mi" || c.Resources.Limits != nil {
		t.Errorf("resources %+v", c.Resources)
	}
	if r.Cluster.AgentCA != nil || r.Cluster.AgentLeaseRole != nil || r.Cluster.ServerLeaseRole != nil {
		t.Error("CA ConfigMap or lease RBAC rendered without being asked")
	}
}

func checkHardened(t *testing.T, pod corev1.PodSpec, c corev1.Container) {
	t.Helper()
	ps, cs := pod.SecurityContext, c.SecurityContext
	if !*ps.RunAsNonRoot || *ps.RunAsUser != 65532 || *ps.RunAsGroup != 65532 || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context %+v", ps)
	}
	if *cs.AllowPrivilegeEscalation || !*cs.ReadOnlyRootFilesystem || !slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container security context %+v", cs)
	}
}

func TestCertificatesAndCA(t *testing.T) {
	ca := testCA(t)
	r := render(t, manifests.Options{ServerAddresses: []string{"192.0.2.10"}, Auth: manifests.AuthCertificates, AgentCA: ca, AgentCertSecret: "agent-tls"})
	pod := r.Cluster.AgentDaemonSet.Spec.Template.Spec
	c := pod.Containers[0]
	for _, want := range []string{"--agent-cert=/etc/konnectivity-agent/cert/tls.crt", "--agent-key=/etc/konnectivity-agent/cert/tls.key", "--ca-cert=/etc/konnectivity-agent/ca/ca.crt"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("agent args lack %s: %q", want, c.Args)
		}
	}
	if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--service-account-token-path") }) {
		t.Errorf("a token path with certificate auth: %q", c.Args)
	}
	if s := pod.Volumes[0].Secret; s == nil || s.SecretName != "agent-tls" || *s.DefaultMode != 0o440 || *pod.SecurityContext.FSGroup != 65532 {
		t.Errorf("certificate volume %+v", pod.Volumes[0])
	}
	if cm := r.Cluster.AgentCA; cm == nil || cm.Data["ca.crt"] != string(ca) || pod.Volumes[1].ConfigMap.Name != cm.Name {
		t.Errorf("CA ConfigMap %+v, volumes %+v", cm, pod.Volumes)
	}
	if r.Cluster.ServerAuthDelegator != nil {
		t.Error("system:auth-delegator bound with certificate auth")
	}
	if !slices.Contains(r.ServerArgs, "--cluster-ca-cert="+manifests.DefaultClusterCACert) ||
		slices.ContainsFunc(r.ServerArgs, func(a string) bool {
			return strings.HasPrefix(a, "--kubeconfig") || strings.HasPrefix(a, "--agent-namespace")
		}) {
		t.Errorf("server args %q", r.ServerArgs)
	}
	for _, f := range r.APIServerFlags {
		if strings.Contains(f, egress.DefaultAgentAudience) {
			t.Errorf("kube-apiserver gets the token audience without tokens: %s", f)
		}
	}
}

func TestLeases(t *testing.T) {
	r := render(t, manifests.Options{ServerAddresses: []string{"lb.example.internal"}, Leases: true, Namespace: "isthmus-system"})
	c := r.Cluster
	checkRole(t, c.ServerLeaseRole, c.ServerLeaseRoleBinding, []string{"get", "list", "watch", "create", "update", "delete"},
		rbacv1.Subject{APIGroup: rbacv1.GroupName, Kind: "User", Name: "system:konnectivity-server"})
	checkRole(t, c.AgentLeaseRole, c.AgentLeaseRoleBinding, []string{"get", "list", "watch"},
		rbacv1.Subject{Kind: "ServiceAccount", Name: "konnectivity-agent", Namespace: "isthmus-system"})
	args := c.AgentDaemonSet.Spec.Template.Spec.Containers[0].Args
	for _, want := range []string{"--count-server-leases", "--lease-namespace=isthmus-system", "--lease-label=k8s-app=konnectivity-server"} {
		if !slices.Contains(args, want) {
			t.Errorf("agent args lack %s: %q", want, args)
		}
	}
	for _, want := range []string{"--enable-lease-controller", "--lease-namespace=isthmus-system", "--kubeconfig=" + manifests.DefaultKubeconfig} {
		if !slices.Contains(r.ServerArgs, want) {
			t.Errorf("server args lack %s: %q", want, r.ServerArgs)
		}
	}
	if slices.ContainsFunc(r.ServerArgs, func(a string) bool { return strings.HasPrefix(a, "--server-count") }) {
		t.Errorf("--server-count with leases: %q", r.ServerArgs)
	}
}

func checkRole(t *testing.T, role *rbacv1.Role, b *rbacv1.RoleBinding, verbs []string, subject rbacv1.Subject) {
	t.Helper()
	if role == nil || b == nil {
		t.Fatal("no lease Role or RoleBinding")
	}
	rule := role.Rules[0]
	if len(role.Rules) != 1 || !slices.Equal(rule.APIGroups, []string{"coordination.k8s.io"}) ||
		!slices.Equal(rule.Resources, []string{"leases"}) || !slices.Equal(rule.Verbs, verbs) || role.Namespace != "isthmus-system" {
		t.Errorf("%s: %+v", role.Name, role)
	}
	if b.RoleRef.Name != role.Name || b.RoleRef.Kind != "Role" || len(b.Subjects) != 1 || b.Subjects[0] != subject || b.Namespace != role.Namespace {
		t.Errorf("%s binding: %+v", role.Name, b)
	}
}

func TestServerPodAndUnit(t *testing.T) {
	r := render(t, manifests.Options{ServerAddresses: []string{"192.0.2.10"}, ServerCount: 1})
	p := r.ServerPod
	c := p.Spec.Containers[0]
	if !p.Spec.HostNetwork || p.Spec.PriorityClassName != "system-node-critical" || p.Namespace != "kube-system" ||
		!slices.Equal(c.Args, r.ServerArgs) || !slices.Equal(c.Command, []string{"/proxy-server"}) {
		t.Errorf("static Pod %+v", p.Spec)
	}
	if *c.SecurityContext.AllowPrivilegeEscalation || !slices.Equal(c.SecurityContext.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		p.Spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("security %+v %+v", p.Spec.SecurityContext, c.SecurityContext)
	}
	if c.LivenessProbe.HTTPGet.Port.IntVal != manifests.HealthPort || c.LivenessProbe.HTTPGet.Host != "127.0.0.1" {
		t.Errorf("liveness %+v", c.LivenessProbe.HTTPGet)
	}
	mounts := map[string]bool{} // path -> read-only
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.ReadOnly
	}
	want := map[string]bool{"/etc/kubernetes/konnectivity-server": false, "/etc/kubernetes/pki": true, manifests.DefaultKubeconfig: true}
	if fmt.Sprint(mounts) != fmt.Sprint(want) {
		t.Errorf("mounts (path: read-only) %v, want %v", mounts, want)
	}
	for _, v := range p.Spec.Volumes {
		if v.HostPath == nil {
			t.Errorf("volume %s is not a hostPath", v.Name)
		}
	}
	unit := string(r.SystemdUnit)
	exec := unit[strings.Index(unit, "\nExecStart=")+len("\nExecStart="):]
	exec = exec[:strings.Index(exec, "\nRestart=")]
	words := strings.Fields(strings.ReplaceAll(exec, "\\\n", " "))
	if words[0] != manifests.DefaultServerBinary || !slices.Equal(words[1:], r.ServerArgs) {
		t.Errorf("ExecStart %q, want the server args %q", words, r.ServerArgs)
	}
	for _, want := range []string{"ReadWritePaths=/etc/kubernetes/konnectivity-server\n", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "WantedBy=multi-user.target"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
}

func TestEgressAndAPIServerFlags(t *testing.T) {
	for _, mode := range []manifests.Mode{manifests.ModeGRPC, manifests.ModeHTTPConnect} {
		r := render(t, manifests.Options{ServerAddresses: []string{"192.0.2.10"}, Mode: mode})
		cfg, err := egress.LoadBytes(r.EgressConfig)
		if err != nil {
			t.Fatal(err)
		}
		conn := cfg.EgressSelections[0].Connection
		wantProto := map[manifests.Mode]apiserver.ProtocolType{manifests.ModeGRPC: apiserver.ProtocolGRPC, manifests.ModeHTTPConnect: apiserver.ProtocolHTTPConnect}[mode]
		if cfg.EgressSelections[0].Name != "cluster" || conn.ProxyProtocol != wantProto || conn.Transport.UDS.UDSName != egress.DefaultUDSName {
			t.Errorf("%s: egress %+v", mode, cfg.EgressSelections[0])
		}
		if !slices.Contains(r.ServerArgs, "--mode="+string(mode)) {
			t.Errorf("%s: server args %q", mode, r.ServerArgs)
		}
		want := []string{"--egress-selector-config-file=" + manifests.DefaultEgressConfig,
			"--api-audiences=" + egress.DefaultServiceAccountIssuer + "," + egress.DefaultAgentAudience}
		if !slices.Equal(r.APIServerFlags, want) {
			t.Errorf("kube-apiserver flags %q, want %q", r.APIServerFlags, want)
		}
	}
}

func TestFilesAndIndex(t *testing.T) {
	r := render(t, manifests.Options{ServerAddresses: []string{"192.0.2.10"}, Auth: manifests.AuthCertificates})
	files, err := r.Files("out")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Path)
		if len(f.Data) == 0 || f.Mode != 0o644 {
			t.Errorf("%s: %d bytes, mode %v", f.Path, len(f.Data), f.Mode)
		}
		if strings.HasSuffix(f.Path, ".yaml") && !strings.Contains(f.Path, "egress") {
			if _, err := manifests.DecodeStrict(f.Data); err != nil {
				t.Errorf("%s: %v", f.Path, err)
			}
		}
	}
	want := []string{manifests.FileIndex, manifests.FileCluster, manifests.FileStaticPod, manifests.FileSystemdUnit, manifests.FileEgressConfig, manifests.FileAPIServer}
	for i := range want {
		want[i] = filepath.Join("out", want[i])
	}
	if !slices.Equal(names, want) {
		t.Errorf("files %q, want %q", names, want)
	}
	index, err := r.Index()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{manifests.FileStaticPod, manifests.FileSystemdUnit, manifests.FileCluster, manifests.FileEgressConfig,
		"create secret tls konnectivity-agent-cert", manifests.DefaultClusterCACert, "--egress-selector-config-file=", "DaemonSet kube-system/konnectivity-agent"} {
		if !strings.Contains(index, want) {
			t.Errorf("index lacks %q:\n%s", want, index)
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	ok := manifests.Options{ServerAddresses: []string{"192.0.2.10"}}
	for _, tc := range []struct {
		change func(*manifests.Options)
		want   string
	}{
		{func(o *manifests.Options) { o.ServerAddresses = nil }, "ServerAddresses none given"},
		{func(o *manifests.Options) { o.ServerAddresses = []string{"192.0.2.10:8132"} }, "without a port"},
		{func(o *manifests.Options) { o.Mode = "tcp" }, `Mode "tcp"`},
		{func(o *manifests.Options) { o.Auth = "none" }, `Auth "none"`},
		{func(o *manifests.Options) { o.ServerAddresses = []string{"a.example", "b.example"}; o.Leases = true }, "ONE address"},
		{func(o *manifests.Options) { o.Leases = true; o.ServerCount = 2 }, "with leases"},
		{func(o *manifests.Options) { o.ServerCount = -1 }, "ServerCount -1"},
		{func(o *manifests.Options) { o.ServerAddresses = []string{"a.example", "b.example"}; o.ServerCount = 3 }, "2 server addresses"},
		{func(o *manifests.Options) { o.AgentPort = 70000 }, "AgentPort 70000"},
		{func(o *manifests.Options) { o.Namespace = "Kube_System" }, "Namespace"},
		{func(o *manifests.Options) { o.ImagePullPolicy = "Sometimes" }, "ImagePullPolicy"},
		{func(o *manifests.Options) { o.HostIPFamily = "ipv5" }, "HostIPFamily"},
		{func(o *manifests.Options) { o.AgentCA = []byte("not a certificate") }, "AgentCA not PEM"},
		{func(o *manifests.Options) { o.Server.ClusterCert = "pki/apiserver.crt" }, "absolute path"},
		{func(o *manifests.Options) { o.Server.Kubeconfig = "/etc/kube config" }, "no spaces"},
		{func(o *manifests.Options) { o.Server.UDSName = "/" + strings.Repeat("s", 120) }, "107 bytes"},
	} {
		o := ok
		tc.change(&o)
		_, err := manifests.Render(o)
		var fe *manifests.FieldError
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &fe) {
			t.Errorf("want a field error with %q, got %v", tc.want, err)
		}
	}
}

// TestServerCountDefault: one server per address unless told otherwise.
func TestServerCountDefault(t *testing.T) {
	r := render(t, manifests.Options{ServerAddresses: []string{"192.0.2.10", "192.0.2.11", "192.0.2.12"}})
	if !slices.Contains(r.ServerArgs, "--server-count=3") ||
		!slices.Contains(r.Cluster.AgentDaemonSet.Spec.Template.Spec.Containers[0].Args, "--proxy-server-host=192.0.2.10,192.0.2.11,192.0.2.12") {
		t.Errorf("server args %q", r.ServerArgs)
	}
	var _ *appsv1.DaemonSet = r.Cluster.AgentDaemonSet
}

// TestSystemdVerify: systemd itself accepts the unit, without a warning.
func TestSystemdVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: the unit's syntax is not checked by systemd here")
	}
	for _, v := range variants(t) {
		o := v.opts
		o.Server.Binary = "/bin/true" // verify checks that ExecStart's program exists
		path := filepath.Join(t.TempDir(), manifests.ServerName+".service")
		if err := os.WriteFile(path, render(t, o).SystemdUnit, 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, analyze, "verify", path).CombinedOutput()
		cancel()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("%s: systemd-analyze verify: %v\n%s", v.name, err, out)
		}
	}
}
