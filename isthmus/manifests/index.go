package manifests

import (
	"fmt"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// Index is the README of a deployment directory: what each file is, where
// it goes, in which order, and how to check each step.
func (r *Rendered) Index() (string, error) {
	o := r.Options
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# isthmus on Kubernetes: what goes where\n\n")
	p("Written by `isthmus manifests` for: mode %s, agents authenticate by %s, %s,\n", o.Mode, o.Auth, r.countLine())
	p("agents dial %s, image %s, namespace %s.\n", r.dialLine(), o.Image, o.Namespace)
	p("Do the steps in order; each says how to check it.\n\n")
	r.indexFiles(p)
	p("## 2. proxy-server on every control-plane node (one of)\n\n")
	p("- Static Pod (kubeadm): `install -m 0644 %s /etc/kubernetes/manifests/`\n", FileStaticPod)
	p("- systemd (no kubelet there, k0s-style): install proxy-server as %s, then\n", o.Server.Binary)
	p("  `install -m 0644 %s /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now %s`\n", FileSystemdUnit, ServerName)
	p("\nCheck: `curl -s http://127.0.0.1:%d/healthz` answers ok; `ss -xl | grep %s` shows the socket.\n", HealthPort, filepath.Base(o.Server.UDSName))
	p("Its arguments (the same in both):\n\n```\nproxy-server %s\n```\n\n", strings.Join(r.ServerArgs, " \\\n  "))
	if err := r.indexAPIServer(p); err != nil {
		return "", err
	}
	r.indexCluster(p)
	return b.String(), nil
}

func (r *Rendered) countLine() string {
	if r.Options.Leases {
		return "servers counted by their Leases"
	}
	if r.Options.ServerCount == 1 {
		return "1 server"
	}
	return fmt.Sprintf("%d servers", r.Options.ServerCount)
}

func (r *Rendered) dialLine() string {
	return fmt.Sprintf("%s port %d", strings.Join(r.Options.ServerAddresses, ", "), r.Options.AgentPort)
}

func (r *Rendered) indexFiles(p func(string, ...any)) {
	o, s := r.Options, r.Options.Server
	p("## 1. Files proxy-server reads, on every control-plane node\n\n")
	p("- `%s`, `%s`: the agent port's certificate and key (kubeadm's kube-apiserver\n", s.ClusterCert, s.ClusterKey)
	if len(o.AgentCA) == 0 {
		p("  pair by default). Agents verify it with the cluster CA (their service account's ca.crt),\n")
	} else {
		p("  pair by default). Agents verify it with the CA of `%s`,\n", FileCluster)
	}
	p("  so its names (SANs) must include what they dial: %s\n", strings.Join(o.ServerAddresses, ", "))
	p("  (kubeadm: ClusterConfiguration apiServer.certSANs; or `isthmus certs agent-port`).\n")
	if serverNeedsKube(o) {
		p("- `%s`: proxy-server's kubeconfig (mode 0600), user `%s`, for %s:\n", s.Kubeconfig, o.ServerUser, r.kubeUse())
		p("  `isthmus certs kubeconfig --server https://127.0.0.1:6443 --tls-server-name kubernetes --user %s --dir DIR`\n", o.ServerUser)
		p("  (the local kube-apiserver, checked against the name every kubeadm apiserver.crt holds),\n")
		p("  then `install -m 0600 DIR/proxy-server.kubeconfig %s`.\n", s.Kubeconfig)
	}
	if o.Auth == AuthCertificates {
		p("- `%s`: the CA that signed the agents' client certificates (`isthmus certs ca`).\n", s.ClusterCACert)
	}
	p("\nCheck: `isthmus certs check %s`.\n\n", s.ClusterCert)
}

func (r *Rendered) kubeUse() string {
	switch {
	case r.Options.Auth == AuthToken && r.Options.Leases:
		return "the agents' TokenReviews and its Lease"
	case r.Options.Auth == AuthToken:
		return "the agents' TokenReviews"
	}
	return "its Lease"
}

func (r *Rendered) indexAPIServer(p func(string, ...any)) error {
	s := r.Options.Server
	p("## 3. kube-apiserver on every control-plane node\n\n")
	p("- `install -m 0644 %s %s`\n", FileEgressConfig, s.EgressConfig)
	p("- add the flags of `%s`:\n\n```\n%s\n```\n\n", FileAPIServer, strings.Join(r.APIServerFlags, "\n"))
	p("  --api-audiences keeps the audiences kube-apiserver accepts today (its --api-audiences, or else\n")
	p("  its --service-account-issuer): check them against yours, or its own tokens stop working.\n")
	vols := []corev1.Volume{
		{Name: "konnectivity-uds", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: filepath.Dir(s.UDSName), Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}},
		{Name: "egress-selector-configuration", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: s.EgressConfig, Type: ptr.To(corev1.HostPathFile)}}},
	}
	mounts := []corev1.VolumeMount{
		{Name: "konnectivity-uds", MountPath: filepath.Dir(s.UDSName)},
		{Name: "egress-selector-configuration", MountPath: s.EgressConfig, ReadOnly: true},
	}
	vy, err := yaml.Marshal(map[string]any{"volumes": vols})
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	my, err := yaml.Marshal(map[string]any{"volumeMounts": mounts})
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	p("- a static Pod kube-apiserver (kubeadm) also needs the socket's folder and the file: add to\n")
	p("  /etc/kubernetes/manifests/kube-apiserver.yaml, under spec:\n\n```yaml\n%s```\n\n", vy)
	p("  and under its container:\n\n```yaml\n%s```\n\n", my)
	p("Check: kube-apiserver restarts and `kubectl get --raw /readyz` answers ok.\n\n")
	return nil
}

func (r *Rendered) indexCluster(p func(string, ...any)) {
	o := r.Options
	p("## 4. The cluster objects, once, with kubectl\n\n")
	if o.Auth == AuthCertificates {
		p("- the agents' client certificate, signed by the CA of `%s`:\n", o.Server.ClusterCACert)
		p("  `isthmus certs agent --dir DIR`, then\n")
		p("  `kubectl -n %s create secret tls %s --cert=DIR/agent.crt --key=DIR/agent.key`\n", o.Namespace, o.AgentCertSecret)
	}
	p("- `kubectl apply --server-side -f %s` (the same as `isthmus manifests ... --out -`):\n", FileCluster)
	for _, obj := range r.Cluster.List() {
		m, err := metaOf(obj)
		if err != nil {
			continue
		}
		p("  - %s %s\n", obj.GetObjectKind().GroupVersionKind().Kind, m)
	}
	p("\nCheck: `kubectl -n %s rollout status daemonset/%s`: an agent is ready once it holds\n", o.Namespace, AgentName)
	p("every server; then `kubectl logs` of any pod goes through the tunnel.\n")
	p("If not: `kubectl -n %s logs daemonset/%s` and proxy-server's log say why.\n", o.Namespace, AgentName)
}

// metaOf is "namespace/name" or "name" of a cluster object.
func metaOf(obj any) (string, error) {
	m, ok := obj.(interface {
		GetName() string
		GetNamespace() string
	})
	if !ok {
		return "", fmt.Errorf("%T has no object metadata", obj)
	}
	if m.GetNamespace() == "" {
		return m.GetName(), nil
	}
	return m.GetNamespace() + "/" + m.GetName(), nil
}
