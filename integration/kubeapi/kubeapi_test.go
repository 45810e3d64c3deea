package kubeapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/utils/exec"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
	"isthmus.dev/integration/harness/controlplane"
	"isthmus.dev/integration/harness/streamkubelet"
)

const (
	e2eNode      = "worker-1"
	e2eNamespace = "isthmus-e2e"
	e2ePod       = "web"
	e2eContainer = "app"
	kubeletPort  = 10250
)

// The fake kubelet's answers: what the control plane can only see through
// the tunnel.
var (
	kubeletHealth = "ok: fake kubelet of " + e2eNode
	kubeletLogs   = "line 1 of " + e2ePod + "/" + e2eContainer + "\nline 2, written on " + e2eNode + "\n"
)

// The kubeadm guide's "Set up Konnectivity service" flags: the server
// authenticates agents by their projected service-account tokens (no
// client certificates), through TokenReview with its own kubeconfig.
const (
	kubeadmNamespace      = "kube-system"
	kubeadmServiceAccount = "konnectivity-agent"
	kubeadmAudience       = "system:konnectivity-server"
	kubeadmServerUser     = "system:konnectivity-server"
)

// TestKubeAPIServerThroughTunnel runs a real kube-apiserver (built from the
// Go module proxy) with etcd and an egress configuration that sends the
// cluster's traffic through proxy-server, deployed with exactly the kubeadm
// guide's flags. The worker is a namespace the control plane cannot open a
// connection into; its proxy-agent dials out with a projected token. Node
// proxying and pod logs must reach the worker's kubelet through the tunnel,
// in GRPC and in HTTPConnect mode, over the native link; fail cleanly
// while the agent is away; and work again when it returns over the ANP
// link.
func TestKubeAPIServerThroughTunnel(t *testing.T) {
	t.Parallel()
	controlplane.Require(t)
	for _, mode := range []string{harness.GRPC, harness.HTTPConnect} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			w := harness.NewWorker(t)
			pki, err := certs.NewBundle(filepath.Join(t.TempDir(), "tunnel"), w.HostAddr.String())
			if err != nil {
				t.Fatal(err)
			}
			harness.RegisterBundle(t, pki)
			uds := harness.UDSPath(t)
			cp := controlplane.StartWithEgress(t, mode, uds)
			startFakeKubelet(t, w, cp.PKI)
			// Checked first: the control plane has no way to the kubelet but the tunnel.
			kubeletAddr := net.JoinHostPort(w.NodeAddr.String(), fmt.Sprint(kubeletPort))
			if c, err := (&net.Dialer{Timeout: 2 * time.Second}).Dial("tcp", kubeletAddr); err == nil {
				c.Close()
				t.Fatalf("the control plane reached the worker's kubelet %s directly: the test proves nothing", kubeletAddr)
			}
			cp.CreateServiceAccount(t, kubeadmNamespace, kubeadmServiceAccount)
			token := harness.NewTokenFile(t, cp.Token(t, kubeadmNamespace, kubeadmServiceAccount, controlplane.TokenOpts{Audience: kubeadmAudience}))

			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: mode, Transport: harness.UDS, UDSName: uds,
				Auth: harness.ServerAuth{NoClientCerts: true, Token: &harness.TokenAuth{
					Namespace: kubeadmNamespace, ServiceAccount: kubeadmServiceAccount, Audience: kubeadmAudience,
					Kubeconfig: cp.ProxyServerKubeconfig(t, kubeadmServerUser, kubeadmNamespace)}},
				Extra: []string{"--logtostderr=true", "--delete-existing-uds-file", "--agent-bind-address=" + w.HostAddr.String()}})
			agent := func(link string) *harness.Agent {
				return harness.StartAgent(t, bins, s, harness.AgentOpts{Hosts: w.HostAddr.String(), Worker: w,
					Auth:  harness.AgentAuth{NoClientCert: true, TokenPath: token.Path},
					Extra: []string{"--logtostderr=true", "--link=" + link}})
			}
			a := agent("native")
			s.WaitReady(t)
			cp.CreateWorkload(t, workload(w.NodeAddr.String()))
			expectKubelet(t, cp.API) // through the tunnel
			expectExec(t, cp)

			a.Kill()
			harness.WaitFor(t, 30*time.Second, "the server to notice the agent is gone", func() bool {
				return harness.HTTPStatus(s.ReadyURL()) != http.StatusOK
			})
			expectNoAgent(t, cp.API)

			// Agent back, over the other link: the same requests work again.
			agent("anp")
			s.WaitReady(t)
			expectKubelet(t, cp.API)
			expectExec(t, cp)
		})
	}
}

// expectNoAgent checks that with the agent away node proxying and pod
// logs fail, promptly, with a reason that reaches the operator: both the
// gRPC error and CONNECT's status line name it.
func expectNoAgent(t *testing.T, k *harness.KubeAPIServer) {
	t.Helper()
	for _, path := range kubeletPaths() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		status, body, err := k.Do(ctx, http.MethodGet, path, nil)
		cancel()
		if err != nil {
			t.Fatalf("GET %s with the agent away: no answer from kube-apiserver: %v", path, err)
		}
		if status < 500 || !strings.Contains(string(body), "no agent available") {
			t.Fatalf("GET %s with the agent away: %d %s; want a 5xx error that says no agent is available", path, status, body)
		}
		t.Logf("agent away: GET %s -> %d %s", path, status, strings.TrimSpace(string(body)))
	}
}

func kubeletPaths() []string {
	return []string{
		"/api/v1/nodes/" + e2eNode + "/proxy/healthz",
		"/api/v1/namespaces/" + e2eNamespace + "/pods/" + e2ePod + "/log",
	}
}

// expectKubelet checks node proxying and pod logs answer with the fake
// kubelet's words. A few tries: kube-apiserver may still hold a tunnel
// from before the agent came back.
func expectKubelet(t *testing.T, k *harness.KubeAPIServer) {
	t.Helper()
	want := []string{kubeletHealth, kubeletLogs}
	for i, path := range kubeletPaths() {
		var status int
		var body []byte
		var err error
		for try := range 10 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			status, body, err = k.Do(ctx, http.MethodGet, path, nil)
			cancel()
			if err == nil && status == http.StatusOK {
				break
			}
			t.Logf("GET %s (try %d): %d %s %v", path, try+1, status, strings.TrimSpace(string(body)), err)
			time.Sleep(time.Second)
		}
		if err != nil || status != http.StatusOK || string(body) != want[i] {
			t.Fatalf("GET %s: %d %q %v; want 200 %q", path, status, body, err, want[i])
		}
	}
}

// expectExec runs `cat` in the pod through kube-apiserver, as kubectl exec
// -i does, once with kubectl's WebSocket protocol (kube-apiserver turns it
// into SPDY toward the kubelet) and once with SPDY: 1 MiB comes back
// byte-exact, and a command's exit code reaches the client.
func expectExec(t *testing.T, cp *controlplane.ControlPlane) {
	t.Helper()
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"websocket", "spdy"} {
		run := func(stdin []byte, cmd ...string) (string, error) {
			req := cp.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(e2eNamespace).Name(e2ePod).
				SubResource("exec").VersionedParams(&corev1.PodExecOptions{Container: e2eContainer, Command: cmd,
				Stdin: true, Stdout: true, Stderr: true}, scheme.ParameterCodec)
			var exe remotecommand.Executor
			var err error
			if proto == "spdy" {
				exe, err = remotecommand.NewSPDYExecutor(cp.Config, http.MethodPost, req.URL())
			} else {
				exe, err = remotecommand.NewWebSocketExecutor(cp.Config, http.MethodGet, req.URL().String())
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out, errOut bytes.Buffer
			err = exe.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: bytes.NewReader(stdin), Stdout: &out, Stderr: &errOut})
			return out.String(), err
		}
		var out string
		var err error
		for try := range 10 { // kube-apiserver may still hold a tunnel from before the agent came back
			if out, err = run(data, "cat"); err == nil {
				break
			}
			t.Logf("exec cat over %s (try %d): %v", proto, try+1, err)
			time.Sleep(time.Second)
		}
		if err != nil || out != string(data) {
			t.Fatalf("exec cat over %s through the tunnel: %d bytes back of %d (equal: %v), %v", proto, len(out), len(data), out == string(data), err)
		}
		_, err = run(nil, "sh", "-c", "exit 7")
		var ee utilexec.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 7 {
			t.Fatalf("exec exiting 7 over %s: %v (%T), want exit code 7", proto, err, err)
		}
	}
}

// workload is the e2e worker's Node and Pod.
func workload(nodeIP string) controlplane.Workload {
	return controlplane.Workload{Node: e2eNode, NodeIP: nodeIP, KubeletPort: kubeletPort,
		Namespace: e2eNamespace, Pod: e2ePod, Container: e2eContainer}
}

// startFakeKubelet serves the kubelet API inside the worker's namespace on
// the node's address (streamkubelet: /healthz, the pod's logs, exec and
// port-forward with the kubelet's own streaming code), over HTTPS with a
// certificate from the cluster CA, and only to clients with a certificate
// from it (kube-apiserver's kubelet client certificate).
func startFakeKubelet(t *testing.T, w *harness.Worker, kp *harness.KubePKI) {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "app.log")
	if err := os.WriteFile(logFile, []byte(kubeletLogs), 0o644); err != nil {
		t.Fatal(err)
	}
	pod := streamkubelet.WorkerPod(w, e2eNamespace, e2ePod, map[string]*streamkubelet.Container{e2eContainer: {Log: logFile}})
	streamkubelet.ServeOnWorker(t, w, kubeletPort, kp, e2eNode, kubeletHealth, streamkubelet.New(nil, pod))
}
