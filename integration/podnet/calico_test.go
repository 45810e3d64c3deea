package podnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	authnv1 "k8s.io/api/authentication/v1"

	"isthmus.dev/cni"
	"isthmus.dev/cni/cnitest"
	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
)

// TestCalicoTwoNodes: Calico (VXLAN, the rendered default), run on two
// nodes as the rendered calico-node DaemonSet and its image run it
// (startup, then felix and the other runit services, with the rendered
// environment, service account and probes), with the rendered CRDs and
// RBAC in the API server: the pods, wired by the rendered conflist with
// Calico's CNI plugin and calico-ipam, reach each other across the nodes
// through the VXLAN device; a NetworkPolicy denying ingress blocks that,
// and removing it restores it; the control plane reaches the pods through
// the tunnel only.
func TestCalicoTwoNodes(t *testing.T) {
	t.Parallel()
	requirePrograms(t, "nsenter", "unshare", "iptables")
	c := newCluster(t)
	cal := harness.CalicoBinaries(t)
	programs := map[string]string{"/bin/calico-node": cal.Node, "calico-node": cal.Node}

	r := render(t, "provider: calico\npodCIDR: "+podCIDR+"\nserviceCIDR: "+serviceCIDR+"\n")
	r.apply(t, c.cp)
	ds := r.daemonSet(t, "calico-node")
	sa := ds.Spec.Template.Spec.ServiceAccountName
	cfg, err := cni.Parse([]byte("provider: calico\n"))
	if err != nil {
		t.Fatal(err)
	}
	vxlanPort, vni := cfg.Calico.VXLANPort, cfg.Calico.VXLANVNI

	nodeEnv := make([][]string, len(c.nodes))
	for i, n := range c.nodes {
		token := c.cp.Token(t, cni.SystemNamespace, sa, controlplane.TokenOpts{})
		n.serviceAccount(t, token, c.caPEM(t), cni.SystemNamespace)
		ctr := r.containerOf(t, ds, "calico-node", n)
		r.mountVolumes(t, ds, ctr, n)
		// The CNI plugin's kubeconfig, as calico-node's install and token
		// monitor write it: a token of calico-cni-plugin requested with
		// calico-node's own credentials (the rendered RBAC allows exactly
		// that), for the API server as the node reaches it.
		install := r.containerOf(t, ds, "install-cni", n)
		n.writeFile(t, cniKubeconfigPath(install), cniKubeconfig(t, c, token, c.caPEM(t)), 0o600)

		// The image's entrypoint (rc.local): startup, which must write the
		// node name, then the tunnel address, then the runit services.
		// The no-cgo build has no libbpf: felix must skip its cleanup of the
		// BPF connect-time load balancer (which would panic in the stub).
		env := append(ctr.env, "FELIX_DebugSkipCTLBCleanup=true")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := n.run(ctx, env, cal.Node, "-startup")
		cancel()
		if err != nil {
			t.Fatalf("calico-node -startup, with the rendered environment: %v", err)
		}
		t.Logf("%s: calico-node -startup: %s", n.name, lastLines(strings.TrimSpace(out), 3))
		name, err := n.readFile("/var/lib/calico/nodename")
		if err != nil || strings.TrimSpace(string(name)) != n.name {
			t.Fatalf("calico-node -startup wrote node name %q (%v), want %s", name, err, n.name)
		}
		env = append(env, "NODENAME="+n.name)
		ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
		_, err = n.run(ctx, env, cal.Node, "-allocate-tunnel-addrs", "-allocate-tunnel-addrs-run-once")
		cancel()
		if err != nil {
			t.Fatalf("calico-node -allocate-tunnel-addrs -allocate-tunnel-addrs-run-once: %v", err)
		}
		nodeEnv[i] = env
		felixEnv := append(append([]string(nil), env...), "FELIX_FELIXHOSTNAME="+n.name, "FELIX_DATASTORETYPE=kubernetes")
		n.supervise(t, "felix", felixEnv, cal.Node, "-felix")
		n.supervise(t, "allocate-tunnel-addrs", env, cal.Node, "-allocate-tunnel-addrs")
		n.supervise(t, "monitor-addresses", env, cal.Node, "-monitor-addresses")
		n.supervise(t, "status-reporter", env, cal.Node, "-status-reporter")
	}
	for i, n := range c.nodes {
		ctr := r.containerOf(t, ds, "calico-node", n)
		ctr.env = nodeEnv[i]
		waitProbe(t, "calico-node's rendered readiness probe", 3*time.Minute, ctr.spec.ReadinessProbe, ctr, n, programs, nil)
		waitProbe(t, "calico-node's rendered liveness probe", time.Minute, ctr.spec.LivenessProbe, ctr, n, programs, nil)
	}
	// Felix made the VXLAN device with the rendered port and VNI.
	for _, n := range c.nodes {
		harness.WaitFor(t, time.Minute, "vxlan.calico on "+n.name, func() bool {
			out, err := exec.Command("ip", "-n", n.ns.Name, "-d", "link", "show", "vxlan.calico").CombinedOutput()
			return err == nil && strings.Contains(string(out), fmt.Sprintf("vxlan id %d ", vni)) && strings.Contains(string(out), fmt.Sprintf("dstport %d ", vxlanPort))
		})
	}

	pods := make([]*pod, len(c.nodes))
	for i, n := range c.nodes {
		pods[i] = addCalicoPod(t, c, r, n, cal.CNIDir)
	}
	// The route to the other node's pod is through the VXLAN device.
	for i, n := range c.nodes {
		other := pods[1-i]
		harness.WaitFor(t, time.Minute, n.name+"'s route to "+other.ip.String()+" through vxlan.calico", func() bool {
			out, err := exec.Command("ip", "-n", n.ns.Name, "route", "get", other.ip.String()).CombinedOutput()
			return err == nil && strings.Contains(string(out), "dev vxlan.calico")
		})
	}
	waitReach(t, pods[0], pods[1], true, "over VXLAN")
	checkPodToPod(t, pods, "over VXLAN")

	// Network policy: deny all ingress to the pod on node-2.
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-ingress", Namespace: "default"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": podName(pods[1].node)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err = c.cp.Client.NetworkingV1().NetworkPolicies("default").Create(ctx, np, metav1.CreateOptions{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	waitReach(t, pods[0], pods[1], false, "with a NetworkPolicy denying ingress to it")
	// The other way is not affected.
	waitReach(t, pods[1], pods[0], true, "while a policy guards the pod on node-2's ingress only")
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	err = c.cp.Client.NetworkingV1().NetworkPolicies("default").Delete(ctx, np.Name, metav1.DeleteOptions{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	waitReach(t, pods[0], pods[1], true, "once the NetworkPolicy is removed")

	c.checkTunnel(t, pods)
	c.checkNoRefusals(t, sa, "calico-cni-plugin", runKubeControllers(t, c, r, cal))
}

// runKubeControllers runs the rendered calico-kube-controllers Deployment's
// container on a pod host of its own (its image's paths, such as its
// status file, writable), under its service account, until its rendered
// readiness and liveness probes pass; it returns the service account.
func runKubeControllers(t *testing.T, c *cluster, r *rendered, cal harness.CalicoBins) string {
	t.Helper()
	d := r.deployment(t, "calico-kube-controllers")
	pod := &d.Spec.Template.Spec
	host := newPodHost(t, c.lan, "kube-controllers", "192.0.2.20")
	host.relayAPI(t, c.api)
	host.serviceAccount(t, c.cp.Token(t, cni.SystemNamespace, pod.ServiceAccountName, controlplane.TokenOpts{}), c.caPEM(t), cni.SystemNamespace)
	ctr := r.podContainer(t, pod, "Deployment "+d.Name, d.Name, host)
	if len(ctr.spec.Command) != 0 || len(ctr.spec.Args) != 0 {
		t.Fatalf("the rendered kube-controllers container sets a command or args (%v %v): the test runs the image's entrypoint", ctr.spec.Command, ctr.spec.Args)
	}
	p := host.start(t, "kube-controllers", ctr.env, cal.KubeControllers)
	t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
	programs := map[string]string{"/usr/bin/check-status": cal.CheckStatus}
	waitProbe(t, "calico-kube-controllers' rendered readiness probe", 2*time.Minute, ctr.spec.ReadinessProbe, ctr, host, programs, p)
	waitProbe(t, "calico-kube-controllers' rendered liveness probe", time.Minute, ctr.spec.LivenessProbe, ctr, host, programs, p)
	return pod.ServiceAccountName
}

// waitReach waits (up to a minute) until from reaches to, or until it no
// longer does (reach false: a policy drops it).
func waitReach(t *testing.T, from, to *pod, reach bool, how string) {
	t.Helper()
	what := fmt.Sprintf("the pod on %s to reach the pod on %s %s: %v", from.node.name, to.node.name, how, reach)
	var last error
	harness.WaitFor(t, time.Minute, what, func() bool {
		last = probeConn(from.ns, to.addr(), how)
		if reach {
			return last == nil
		}
		return errors.Is(last, errBlocked)
	})
	t.Logf("%s: yes (last attempt: %v)", what, last)
}

func podName(n *node) string { return "pod-on-" + n.name }

// cniKubeconfigPath is where Calico's installer writes the plugin's
// kubeconfig: CNI_NET_DIR (default /etc/cni/net.d)/calico-kubeconfig.
func cniKubeconfigPath(install container) string {
	dir, ok := install.envValue("CNI_NET_DIR")
	if !ok || dir == "" {
		dir = "/etc/cni/net.d"
	}
	return filepath.Join(dir, "calico-kubeconfig")
}

// cniKubeconfig is the CNI plugin's kubeconfig: a token of the
// calico-cni-plugin service account, requested as calico-node.
func cniKubeconfig(t *testing.T, c *cluster, nodeToken string, ca []byte) []byte {
	t.Helper()
	asNode := &rest.Config{Host: c.cp.API.URL, BearerToken: nodeToken, TLSClientConfig: rest.TLSClientConfig{CAData: ca}, Timeout: 30 * time.Second}
	client, err := kubernetes.NewForConfig(asNode)
	if err != nil {
		t.Fatal(err)
	}
	secs := int64(3600)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := client.CoreV1().ServiceAccounts(cni.SystemNamespace).CreateToken(ctx, "calico-cni-plugin",
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &secs}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("calico-node requesting a token of calico-cni-plugin (the rendered RBAC must allow it): %v", err)
	}
	harness.RegisterSecret(t, "a token of calico-cni-plugin", resp.Status.Token)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: fmt.Sprintf("https://127.0.0.1:%d", nodeAPIPort), CertificateAuthorityData: ca}
	kc.AuthInfos["calico"] = &clientcmdapi.AuthInfo{Token: resp.Status.Token}
	kc.Contexts["calico-context"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "calico"}
	kc.CurrentContext = "calico-context"
	b, err := clientcmd.Write(*kc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// calicoConflist is the rendered template (calico-config's
// cni_network_config) with the placeholders filled in as Calico's
// installer fills them from the install-cni container's environment.
func calicoConflist(t *testing.T, r *rendered, install container, n *node) []byte {
	t.Helper()
	tmpl, ok := install.envValue("CNI_NETWORK_CONFIG")
	if !ok {
		t.Fatal("the rendered install-cni container has no CNI_NETWORK_CONFIG")
	}
	get := func(name, def string) string {
		if v, ok := install.envValue(name); ok && v != "" {
			return v
		}
		return def
	}
	repl := strings.NewReplacer(
		"__KUBERNETES_NODE_NAME__", get("KUBERNETES_NODE_NAME", n.name),
		"__KUBECONFIG_FILEPATH__", cniKubeconfigPath(install),
		"__CNI_MTU__", get("CNI_MTU", "1500"),
		"__LOG_LEVEL__", get("LOG_LEVEL", "info"),
		"__DATASTORE_TYPE__", get("DATASTORE_TYPE", "kubernetes"),
	)
	out := repl.Replace(tmpl)
	if i := strings.Index(out, "__"); i >= 0 && strings.Contains(out[i+2:], "__") {
		t.Fatalf("the rendered conflist template has a placeholder Calico's installer does not fill: %s", out)
	}
	return []byte(out)
}

// addCalicoPod creates a Pod object on n (the CNI plugin reads it and
// annotates it, felix makes it a workload endpoint), and wires a pod
// namespace with the rendered conflist, the plugins run in n's mount
// namespace as the container runtime of n runs them.
func addCalicoPod(t *testing.T, c *cluster, r *rendered, n *node, calicoDir string) *pod {
	t.Helper()
	d := r.daemonSet(t, "calico-node")
	install := r.containerOf(t, d, "install-cni", n)
	conflist := calicoConflist(t, r, install, n)
	name := podName(n)
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "backend", Image: "registry.invalid/backend:test"}}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.cp.Client.CoreV1().Pods("default").Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := &pod{node: n, ns: cnitest.NewNetNS(t, n.name+"-pod")}
	rt := cnitest.NewRuntime(t, cnitest.Plugins(t), n.ns, conflist)
	rt.CNI = libcni.NewCNIConfigWithCacheDir([]string{calicoDir, cnitest.Plugins(t)}, t.TempDir(), &nodeExec{n: n})
	id := "calico-" + n.name
	rc := cnitest.RuntimeConf(p.ns, id, nil)
	rc.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}, {"K8S_POD_INFRA_CONTAINER_ID", id}}
	res, err := rt.Add(ctx, rc)
	if err != nil {
		t.Fatalf("CNI ADD of %s with the rendered Calico conflist: %v\n%s", name, err, conflist)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := rt.Del(ctx, rc); err != nil {
			t.Errorf("cleanup: CNI DEL of %s: %v", name, err)
		}
	})
	p.ip, _ = cnitest.PodIP(t, res)
	if !netip.MustParsePrefix(podCIDR).Contains(p.ip) {
		t.Fatalf("calico-ipam gave %s an address outside the pool %s: %s", name, podCIDR, p.ip)
	}
	p.echo = startEcho(t, p.ns, netip.AddrPortFrom(p.ip, backendPort))
	return p
}

// nodeExec runs the CNI plugins in the node's mount namespace (and
// network namespace), as the container runtime of that node would: the
// calico plugin reads the kubeconfig and the node's /var/lib/calico there,
// and logs to its /var/log/calico.
type nodeExec struct {
	n *node
}

func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "nsenter", e.n.command(pluginPath)...)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var perr types.Error
		if json.Unmarshal(stdout.Bytes(), &perr) == nil && perr.Code != 0 {
			return nil, &perr
		}
		return nil, fmt.Errorf("plugin %s: %w: %s%s", filepath.Base(pluginPath), err, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), nil
}

func (e *nodeExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *nodeExec) Decode(jsonBytes []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(jsonBytes)
}
