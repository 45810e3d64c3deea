package kubeapi

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"

	"isthmus.dev/certs"
	"isthmus.dev/certs/kubeconfig"
	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
	"isthmus.dev/integration/harness/kubelet"
	"isthmus.dev/isthmus/manifests"
)

// TestRenderedManifests deploys what `isthmus manifests` renders, as an
// operator would: the cluster objects go to a real kube-apiserver by
// server-side apply (the RBAC and the ServiceAccount for real, the
// DaemonSet as a dry run, since no kubelet runs it), kube-apiserver runs
// with the rendered egress file and flags, and proxy-server and proxy-agent
// run with exactly the command lines of the static Pod and the DaemonSet,
// the way a kubelet runs them: volumes at their mount paths, the agent's
// token from a TokenRequest with the audience and expiry of its projected
// volume, $(NODE_NAME) and $(HOST_IP) from the node. proxy-server's
// kubeconfig user has nothing but what the rendered RBAC grants. Node
// proxying and pod logs must then reach the firewalled worker's kubelet
// through them, in GRPC and in HTTPConnect mode.
//
// The modes run one after the other: the manifests' fixed admin and health
// ports (8133, 8134) are used as rendered, on the host.
func TestRenderedManifests(t *testing.T) {
	t.Parallel()
	controlplane.Require(t)
	for _, mode := range []manifests.Mode{manifests.ModeGRPC, manifests.ModeHTTPConnect} {
		t.Run(string(mode), func(t *testing.T) { runRenderedManifests(t, mode) })
	}
}

func runRenderedManifests(t *testing.T, mode manifests.Mode) {
	w := harness.NewWorker(t)
	node := t.TempDir() // the control-plane node's /etc/kubernetes
	opts := manifests.Options{
		Mode: mode, ServerAddresses: []string{w.HostAddr.String()}, AgentPort: harness.FreePort(t),
		Server: manifests.ServerOptions{
			UDSName:     harness.UDSPath(t),
			ClusterCert: filepath.Join(node, "pki", "apiserver.crt"), ClusterKey: filepath.Join(node, "pki", "apiserver.key"),
			Kubeconfig:   filepath.Join(node, "konnectivity-server.conf"),
			EgressConfig: filepath.Join(node, "egress-selector-configuration.yaml"),
			// kube-apiserver's audiences today: its issuer.
			ExistingAudiences: []string{controlplane.Issuer},
		},
	}
	r, err := manifests.Render(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFileAtomic(r.Options.Server.EgressConfig, r.EgressConfig, 0o644); err != nil {
		t.Fatal(err)
	}
	pki := controlplane.SharedPKI(t)
	cp := controlplane.Start(t, controlplane.Opts{EtcdURL: controlplane.SharedEtcd(t), PKI: pki, Extra: r.APIServerFlags})
	applyRendered(t, cp, r)
	writeServerFiles(t, cp, r, w)

	server := r.ServerPod.Spec.Containers[0].Name
	kubelet.Start(t, kubelet.Container{Pod: &r.ServerPod.Spec, Name: server,
		Binaries: map[string]string{"/proxy-server": bins.ProxyServer}})
	startRenderedAgent(t, cp, r, w)
	health := "http://127.0.0.1:" + strconv.Itoa(int(r.ServerPod.Spec.Containers[0].ReadinessProbe.HTTPGet.Port.IntVal)) + "/readyz"
	harness.WaitFor(t, 60*time.Second, "proxy-server's readiness probe (an agent connected)", func() bool {
		return harness.HTTPStatus(health) == http.StatusOK
	})

	startFakeKubelet(t, w, cp.PKI)
	cp.CreateWorkload(t, workload(w.NodeAddr.String()))
	expectKubelet(t, cp.API)
}

// applyRendered server-side applies the rendered YAML stream, object by
// object as `kubectl apply --server-side` would: for real, except the
// DaemonSet, which is a dry run (validated and defaulted by kube-apiserver,
// not stored: nothing would run it).
func applyRendered(t *testing.T, cp *controlplane.ControlPlane, r *manifests.Rendered) {
	t.Helper()
	stream, err := r.ClusterYAML()
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(strings.NewReader(string(stream)), 4096)
	var objs []*unstructured.Unstructured
	for range 100 { // bounded: a deployment has a handful of objects
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			break
		}
		if len(u.Object) != 0 {
			objs = append(objs, u)
		}
	}
	if want := len(r.Cluster.List()); len(objs) != want {
		t.Fatalf("decoded %d objects of the stream; the deployment has %d", len(objs), want)
	}
	cp.Apply(t, objs, controlplane.ApplyOpts{DryRun: func(u *unstructured.Unstructured) bool { return u.GetKind() == "DaemonSet" }})
}

// writeServerFiles puts proxy-server's files where the static Pod reads
// them on the node: the agent-port certificate (kubeadm's apiserver.crt,
// from the cluster CA, for the address agents dial) and a kubeconfig of
// its user, which has nothing but what the rendered RBAC granted.
func writeServerFiles(t *testing.T, cp *controlplane.ControlPlane, r *manifests.Rendered, w *harness.Worker) {
	t.Helper()
	s := r.Options.Server
	cert, key := cp.PKI.IssueServing(t, "apiserver", w.HostAddr.String(), "127.0.0.1")
	copyFile(t, cert, s.ClusterCert, 0o644)
	copyFile(t, key, s.ClusterKey, 0o600)
	userCert, userKey := cp.PKI.ClientCert(t, "konnectivity-server-user", r.Options.ServerUser)
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	kc, err := kubeconfig.Render(kubeconfig.Config{Server: cp.API.URL, ServerCA: read(cp.PKI.CA),
		ClientCert: read(userCert), ClientKey: read(userKey), User: r.Options.ServerUser})
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFileAtomic(s.Kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFileAtomic(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// startRenderedAgent runs the DaemonSet's container in the worker, as the
// kubelet of that node would: the projected token volume holds a token
// from a TokenRequest with the volume's audience and expiry, and the
// service account's own volume (which the ServiceAccount admission plugin
// adds to every pod) holds the cluster CA.
func startRenderedAgent(t *testing.T, cp *controlplane.ControlPlane, r *manifests.Rendered, w *harness.Worker) {
	t.Helper()
	ds := r.Cluster.AgentDaemonSet
	pod := ds.Spec.Template.Spec.DeepCopy()
	volumes := map[string]string{}
	for _, v := range pod.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			tok := src.ServiceAccountToken
			if tok == nil {
				continue
			}
			dir := t.TempDir()
			token := cp.Token(t, ds.Namespace, pod.ServiceAccountName, controlplane.TokenOpts{
				Audience: tok.Audience, Expiration: time.Duration(*tok.ExpirationSeconds) * time.Second})
			if err := os.WriteFile(filepath.Join(dir, tok.Path), []byte(token), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			volumes[v.Name] = dir
		}
	}
	if len(volumes) == 0 {
		t.Fatal("the DaemonSet has no projected service-account token")
	}
	// What the ServiceAccount admission plugin adds: the cluster CA at the
	// service account's path.
	saDir := t.TempDir()
	copyFile(t, cp.PKI.CA, filepath.Join(saDir, "ca.crt"), 0o644)
	pod.Volumes = append(pod.Volumes, corev1.Volume{Name: "kube-api-access"})
	for i := range pod.Containers {
		pod.Containers[i].VolumeMounts = append(pod.Containers[i].VolumeMounts, corev1.VolumeMount{
			Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true})
	}
	volumes["kube-api-access"] = saDir
	kubelet.Start(t, kubelet.Container{Pod: pod, Name: pod.Containers[0].Name, Worker: w,
		Binaries: map[string]string{"/proxy-agent": bins.ProxyAgent},
		Fields:   map[string]string{"spec.nodeName": e2eNode, "status.hostIP": w.NodeAddr.String()},
		Volumes:  volumes})
	t.Logf("agent started with %s", fmt.Sprint(pod.Containers[0].Args))
}
