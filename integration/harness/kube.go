package harness

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// KubeVersion is the kube-apiserver the end-to-end tests build from the Go
// module proxy (see kubeapiserver/go.mod).
const KubeVersion = "v1.37.2"

// RequireKube skips t unless a kube-apiserver end-to-end test can run here:
// root (for the worker's namespace), ip, nft and etcd (Debian's
// etcd-server; `make deps` installs it when root).
func RequireKube(t testing.TB) {
	t.Helper()
	RequireBlackhole(t)
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skipf("needs etcd for kube-apiserver (apt-get install etcd-server, or run `make test` as root): %v", err)
	}
}

// KubeAPIServerBinary builds kube-apiserver KubeVersion once per machine and
// returns its path (BuildTool: cached under the user cache directory,
// keyed by the builder module's go.mod and go.sum); the first build takes
// about 10 minutes on 2 cores, later ones (or a warm Go build cache) seconds.
func KubeAPIServerBinary(t testing.TB) string {
	t.Helper()
	return BuildTool(t, Tool{
		Name: "kube-apiserver-" + KubeVersion, Module: "kubeapiserver", Package: "k8s.io/kubernetes/cmd/kube-apiserver",
		LDFlags: kubeLDFlags(), Timeout: 40 * time.Minute, FirstBuild: "about 10 minutes on 2 cores",
	})
}

// KubectlBinary builds kubectl KubeVersion once per machine (BuildTool,
// from the builder module integration/kubectl) and returns its path; the
// first build takes about 3 minutes on 2 cores.
func KubectlBinary(t testing.TB) string {
	t.Helper()
	return BuildTool(t, Tool{
		Name: "kubectl-" + KubeVersion, Module: "kubectl", Package: "k8s.io/kubernetes/cmd/kubectl",
		LDFlags: kubeLDFlags(), Timeout: 30 * time.Minute, FirstBuild: "about 3 minutes on 2 cores",
	})
}

// kubeLDFlags stamp KubeVersion into a Kubernetes program, as its
// release builds do.
func kubeLDFlags() string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubeVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	return strings.Join([]string{
		"-X k8s.io/component-base/version.gitVersion=" + KubeVersion,
		"-X k8s.io/component-base/version.gitMajor=" + major,
		"-X k8s.io/component-base/version.gitMinor=" + minor,
		"-X k8s.io/component-base/version.gitTreeState=clean",
		"-X k8s.io/client-go/pkg/version.gitVersion=" + KubeVersion,
	}, " ")
}

// StartEtcd runs an etcd for one test on loopback and returns its client URL.
func StartEtcd(t testing.TB) string {
	t.Helper()
	client, peer := FreePort(t), FreePort(t)
	url := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	p := Start(t, "etcd", "etcd", "--name=isthmus-test", "--data-dir="+t.TempDir(),
		"--listen-client-urls="+url, "--advertise-client-urls="+url,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=isthmus-test="+peerURL, "--logger=zap", "--log-level=warn")
	WaitFor(t, 30*time.Second, "etcd health", func() bool {
		select {
		case <-p.Exited():
			t.Fatalf("etcd exited at start:\n%s", p.Output())
		default:
		}
		return HTTPStatus(url+"/health") == http.StatusOK
	})
	return url
}

// KubeAPIServer is a running kube-apiserver and an administrator's client.
type KubeAPIServer struct {
	*Proc
	URL    string
	client *http.Client
}

// KubeAPIServerOpts are the files and flags of one kube-apiserver.
type KubeAPIServerOpts struct {
	Bin          string
	EtcdURL      string
	EtcdPrefix   string // keeps the state of kube-apiservers sharing one etcd apart
	ServingCert  string
	ServingKey   string
	ClientCA     string // CA of the client certificates it accepts
	KubeletCA    string // CA of the kubelets' serving certificates
	KubeletCert  string // its client certificate toward kubelets
	KubeletKey   string
	SAPublicKey  string
	SASigningKey string
	SAIssuer     string // --service-account-issuer
	AdminCert    string // the test's own client certificate (system:masters)
	AdminKey     string
	Extra        []string      // more flags: the egress renderer's --egress-selector-config-file and --api-audiences
	ReadyTimeout time.Duration // for /readyz; 3 minutes if 0
}

// StartKubeAPIServer starts kube-apiserver on loopback and waits until
// /readyz answers 200 to the administrator's client.
func StartKubeAPIServer(t testing.TB, o KubeAPIServerOpts) *KubeAPIServer {
	t.Helper()
	port := FreePort(t)
	args := []string{
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
		"--etcd-servers=" + o.EtcdURL, "--etcd-prefix=" + o.EtcdPrefix,
		"--tls-cert-file=" + o.ServingCert, "--tls-private-key-file=" + o.ServingKey,
		"--client-ca-file=" + o.ClientCA,
		"--kubelet-certificate-authority=" + o.KubeletCA,
		"--kubelet-client-certificate=" + o.KubeletCert, "--kubelet-client-key=" + o.KubeletKey,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=" + o.SAIssuer,
		"--service-account-key-file=" + o.SAPublicKey, "--service-account-signing-key-file=" + o.SASigningKey,
		"--service-cluster-ip-range=10.96.0.0/24",
		"--authorization-mode=RBAC",
		// No controller-manager runs, so no namespace gets its "default"
		// service account: pods are admitted without one.
		"--disable-admission-plugins=ServiceAccount",
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--cert-dir=" + t.TempDir(),
	}
	args = append(args, o.Extra...)
	k := &KubeAPIServer{URL: "https://127.0.0.1:" + strconv.Itoa(port)}
	caPEM, err := os.ReadFile(o.ClientCA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(o.AdminCert, o.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	k.client = &http.Client{Transport: tr, Timeout: 60 * time.Second}
	k.Proc = Start(t, "kube-apiserver", o.Bin, args...)
	wait := o.ReadyTimeout
	if wait == 0 {
		wait = 3 * time.Minute
	}
	WaitFor(t, wait, "kube-apiserver /readyz", func() bool {
		select {
		case <-k.Exited():
			t.Fatalf("kube-apiserver exited at start:\n%s", tail(k.Output(), 60))
		default:
		}
		status, _, err := k.Do(context.Background(), http.MethodGet, "/readyz", nil)
		return err == nil && status == http.StatusOK
	})
	return k
}

// Do sends one request as the administrator and returns the status and body.
func (k *KubeAPIServer) Do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, k.URL+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, b, fmt.Errorf("%s %s: body: %w", method, path, err)
	}
	return resp.StatusCode, b, nil
}
