package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"isthmus.dev/certs"
	"isthmus.dev/egress"
)

// StartWithEgress starts a control plane (on the shared etcd and PKI) with
// the egress configuration `isthmus egress render` makes for mode (grpc or
// http-connect): the cluster's traffic to a proxy-server on the Unix
// socket uds; extra are more kube-apiserver flags. API aggregation is set
// up as kubeadm does (KubePKI.AggregationFlags), and kube-apiserver calls
// webhooks and aggregated API servers at their Services' endpoint
// addresses (--enable-aggregator-routing), as a control plane that cannot
// reach cluster IPs must: through the egress "cluster" selection, that is
// through the tunnel.
func StartWithEgress(t testing.TB, mode, uds string, extra ...string) *ControlPlane {
	t.Helper()
	rendered, err := egress.Render(egress.Config{Mode: egress.Mode(mode), Transport: egress.TransportUDS,
		UDSName: uds, ControlPlane: egress.RouteDirect, Etcd: egress.RouteDirect})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "egress.yaml")
	if err := certs.WriteFileAtomic(file, rendered, 0o644); err != nil {
		t.Fatal(err)
	}
	pki := SharedPKI(t)
	flags := append(egress.APIServerFlags(file, nil), pki.AggregationFlags()...)
	flags = append(flags, "--enable-aggregator-routing=true")
	return Start(t, Opts{EtcdURL: SharedEtcd(t), PKI: pki, Extra: append(flags, extra...)})
}

// Workload is a Node at a worker's address and a Pod bound to it, with one
// container: what kube-apiserver needs to send logs, exec and port-forward
// to the worker's kubelet.
type Workload struct {
	Node, NodeIP string
	KubeletPort  int
	Namespace    string
	Pod          string
	Container    string
}

// CreateWorkload creates w's Node (its InternalIP and kubelet port in its
// status), namespace and Pod.
func (cp *ControlPlane) CreateWorkload(t testing.TB, w Workload) {
	t.Helper()
	objects := []struct{ path, body string }{
		{"/api/v1/nodes", fmt.Sprintf(`{"apiVersion":"v1","kind":"Node","metadata":{"name":%q},
			"status":{"addresses":[{"type":"InternalIP","address":%q}],"daemonEndpoints":{"kubeletEndpoint":{"Port":%d}}}}`,
			w.Node, w.NodeIP, w.KubeletPort)},
		{"/api/v1/namespaces", fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q}}`, w.Namespace)},
		{"/api/v1/namespaces/" + w.Namespace + "/pods", fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q},
			"spec":{"nodeName":%q,"containers":[{"name":%q,"image":"registry.invalid/app:1"}]}}`, w.Pod, w.Node, w.Container)},
	}
	for _, o := range objects {
		// A namespace just created may not be known to admission yet: retry.
		var status int
		var body []byte
		var err error
		for range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			status, body, err = cp.API.Do(ctx, http.MethodPost, o.path, []byte(o.body))
			cancel()
			if err == nil && status == http.StatusCreated {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil || status != http.StatusCreated {
			t.Fatalf("POST %s: %d %s %v", o.path, status, body, err)
		}
	}
	// Running, as the kubelet reports a started pod (kubectl port-forward
	// refuses a pod that is not).
	ctx, cancel := callCtx()
	defer cancel()
	pod, err := cp.Client.CoreV1().Pods(w.Namespace).Get(ctx, w.Pod, metav1.GetOptions{})
	if err == nil {
		now := metav1.Now()
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: w.NodeIP, StartTime: &now,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: w.Container, Ready: true, Image: pod.Spec.Containers[0].Image,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}}
		_, err = cp.Client.CoreV1().Pods(w.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatalf("pod %s/%s status Running: %v", w.Namespace, w.Pod, err)
	}
}
