package deploy

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"isthmus.dev/integration/harness/kubelet"
	"isthmus.dev/isthmus/manifests"
	agentapp "isthmus.dev/proxy-agent/app"
	serverapp "isthmus.dev/proxy-server/app"
)

// downward gives the container's env the values the kubelet would: the
// node's name and IP for the fieldRefs.
func downward(t *testing.T, c corev1.Container, hostIP string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			env[e.Name] = "worker-1"
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP":
			env[e.Name] = hostIP
		default:
			t.Fatalf("env %s: a source the test does not know", e.Name)
		}
	}
	return env
}

// TestDaemonArgsParse: the arguments in the manifests are accepted by
// proxy-agent's and proxy-server's own command lines and mean what the
// manifests intend.
func TestDaemonArgsParse(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "konnectivity-server.conf")
	if err := os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range cases() {
		t.Run(s.name, func(t *testing.T) {
			o := manifests.Options{
				ServerAddresses: s.addresses, ServerCount: s.serverCount, Leases: s.leases,
				Auth: manifests.Auth(s.auth), Namespace: s.namespace, HostIPFamily: s.hostIPFamily,
				Server: manifests.ServerOptions{Kubeconfig: kubeconfig},
			}
			if s.agentCA {
				_, pem := writeCA(t)
				o.AgentCA = []byte(pem)
			}
			r, err := manifests.Render(o)
			if err != nil {
				t.Fatal(err)
			}
			checkAgentArgs(t, r)
			checkServerArgs(t, r, r.ServerPod.Spec.Containers[0].Args)
			checkServerArgs(t, r, unitArgs(t, r.SystemdUnit))
		})
	}
}

func checkAgentArgs(t *testing.T, r *manifests.Rendered) {
	t.Helper()
	o := r.Options
	c := r.Cluster.AgentDaemonSet.Spec.Template.Spec.Containers[0]
	hostIP := "192.0.2.7"
	if o.HostIPFamily == "ipv6" {
		hostIP = "2001:db8::7"
	}
	env := downward(t, c, hostIP)
	var args []string
	for _, a := range c.Args {
		if args = append(args, kubelet.Expand(a, env)); strings.Contains(args[len(args)-1], "$(") {
			t.Fatalf("%q refers to a variable the container's env does not define", a)
		}
	}
	p, err := agentapp.Parse(args, io.Discard)
	if err != nil {
		t.Fatalf("proxy-agent refuses the DaemonSet's args %q: %v", args, err)
	}
	cfg := p.Config
	want := []struct {
		what      string
		got, want any
	}{
		{"servers", strings.Join(cfg.ProxyServerHosts, ","), strings.Join(o.ServerAddresses, ",")},
		{"port", cfg.ProxyServerPort, o.AgentPort},
		{"identifiers", cfg.AgentIdentifiers, "host=worker-1&" + o.HostIPFamily + "=" + hostIP},
		{"health port", cfg.HealthPort, manifests.HealthPort},
		{"admin port", cfg.AdminPort, manifests.AdminPort},
		{"count leases", cfg.CountServerLeases, o.Leases},
	}
	for _, w := range want {
		if w.got != w.want {
			t.Errorf("proxy-agent %s: %v, want %v", w.what, w.got, w.want)
		}
	}
	if o.Auth == manifests.AuthToken && (cfg.TokenPath != manifests.TokenDir+"/"+manifests.TokenFile || cfg.AgentCert != "") {
		t.Errorf("token auth: token %q, cert %q", cfg.TokenPath, cfg.AgentCert)
	}
	if o.Auth == manifests.AuthCertificates && (cfg.TokenPath != "" || !strings.HasPrefix(cfg.AgentCert, manifests.AgentCertDir+"/")) {
		t.Errorf("certificate auth: token %q, cert %q", cfg.TokenPath, cfg.AgentCert)
	}
	if mounted := mountedAt(c, filepath.Dir(cfg.CACert)); !mounted && cfg.CACert != manifests.ServiceAccountCA {
		t.Errorf("--ca-cert %s is in no volume of the container", cfg.CACert)
	}
}

// mountedAt reports whether the container mounts a volume at dir.
func mountedAt(c corev1.Container, dir string) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == dir })
}

func checkServerArgs(t *testing.T, r *manifests.Rendered, args []string) {
	t.Helper()
	o := r.Options
	cmd, err := serverapp.Parse(args, io.Discard)
	if err != nil {
		t.Fatalf("proxy-server refuses %q: %v", args, err)
	}
	cfg := cmd.Config
	if cfg.UDSName != o.Server.UDSName || cfg.ServerPort != 0 || cfg.AgentPort != o.AgentPort || string(cfg.Mode) != string(o.Mode) ||
		cfg.HealthPort != manifests.HealthPort || cfg.AdminPort != manifests.AdminPort {
		t.Errorf("proxy-server frontend and ports: %+v", cfg)
	}
	if tok := cfg.TokenAuth(); tok != (o.Auth == manifests.AuthToken) ||
		(tok && (cfg.AgentNamespace != o.Namespace || cfg.AgentServiceAccount != manifests.AgentName || cfg.AuthenticationAudience != o.Audience)) {
		t.Errorf("proxy-server token auth %v: %q %q %q", tok, cfg.AgentNamespace, cfg.AgentServiceAccount, cfg.AuthenticationAudience)
	}
	if (cfg.ClusterCACert != "") != (o.Auth == manifests.AuthCertificates) {
		t.Errorf("proxy-server --cluster-ca-cert %q with auth %s", cfg.ClusterCACert, o.Auth)
	}
	if cfg.EnableLeaseController != o.Leases || (o.Leases && cfg.LeaseNamespace != o.Namespace) || (!o.Leases && cfg.ServerCount != o.ServerCount) {
		t.Errorf("proxy-server leases %v in %q, count %d", cfg.EnableLeaseController, cfg.LeaseNamespace, cfg.ServerCount)
	}
}

// unitArgs are the arguments of the systemd unit's ExecStart (the unit
// writes one per continued line, none quoted).
func unitArgs(t *testing.T, unit []byte) []string {
	t.Helper()
	s := string(unit)
	i := strings.Index(s, "\nExecStart=")
	if i < 0 {
		t.Fatalf("no ExecStart in the unit:\n%s", s)
	}
	s = s[i+len("\nExecStart="):]
	var words []string
	for {
		line, rest, _ := strings.Cut(s, "\n")
		cont := strings.HasSuffix(line, "\\")
		words = append(words, strings.Fields(strings.TrimSuffix(line, "\\"))...)
		if !cont {
			break
		}
		s = rest
	}
	for i, w := range words {
		words[i] = strings.NewReplacer("%%", "%", "$$", "$").Replace(w)
	}
	return words[1:]
}
