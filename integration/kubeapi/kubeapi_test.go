package kubeapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/egress"
	"isthmus.dev/integration/harness"
)

const (
	saIssuer     = "https://kubernetes.default.svc"
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

// TestKubeAPIServerThroughTunnel runs a real kube-apiserver (built from the
// Go module proxy) with etcd and an egress configuration that sends the
// cluster's traffic through proxy-server. The worker is a namespace the
// control plane cannot open a connection into; its proxy-agent dials out.
// Node proxying and pod logs must reach the worker's kubelet through the
// tunnel, in GRPC and in HTTPConnect mode, fail cleanly while the agent is
// away, and recover when it returns.
func TestKubeAPIServerThroughTunnel(t *testing.T) {
	harness.RequireKube(t)
	if testing.Short() {
		t.Skip("builds and runs a real kube-apiserver: not in -short")
	}
	kubeBin := harness.KubeAPIServerBinary(t)
	harness.LeakCheck(t)

	w := harness.NewWorker(t)
	dir := t.TempDir()
	pki, err := certs.NewBundle(filepath.Join(dir, "tunnel"), w.HostAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	kp := newKubePKI(t, filepath.Join(dir, "kube"), w.NodeAddr.String())
	startFakeKubelet(t, w, kp)

	// Checked first: the control plane has no way to the kubelet but the tunnel.
	kubeletAddr := net.JoinHostPort(w.NodeAddr.String(), fmt.Sprint(kubeletPort))
	if c, err := (&net.Dialer{Timeout: 2 * time.Second}).Dial("tcp", kubeletAddr); err == nil {
		c.Close()
		t.Fatalf("the control plane reached the worker's kubelet %s directly: the test proves nothing", kubeletAddr)
	}

	etcd := harness.StartEtcd(t)
	for _, mode := range []string{harness.GRPC, harness.HTTPConnect} {
		t.Run(mode, func(t *testing.T) {
			harness.LeakCheck(t)
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: mode, Transport: harness.UDS,
				Extra: []string{"--agent-bind-address=" + w.HostAddr.String()}})
			a := harness.StartAgent(t, bins, s, harness.AgentOpts{Hosts: w.HostAddr.String(), Worker: w})
			s.WaitReady(t)

			// The egress configuration and flags as `isthmus egress render`
			// makes them.
			rendered, err := egress.Render(egress.Config{Mode: egress.Mode(mode), Transport: egress.TransportUDS,
				UDSName: s.UDS, ControlPlane: egress.RouteDirect, Etcd: egress.RouteDirect})
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "egress.yaml")
			if err := certs.WriteFileAtomic(file, rendered, 0o644); err != nil {
				t.Fatal(err)
			}
			k := harness.StartKubeAPIServer(t, harness.KubeAPIServerOpts{
				Bin: kubeBin, EtcdURL: etcd, EtcdPrefix: "/isthmus-" + mode,
				ServingCert: kp.servingCert, ServingKey: kp.servingKey, ClientCA: kp.ca,
				KubeletCA: kp.ca, KubeletCert: kp.kubeletClientCert, KubeletKey: kp.kubeletClientKey,
				SAPublicKey: kp.saPub, SASigningKey: kp.saKey, SAIssuer: saIssuer,
				AdminCert: kp.adminCert, AdminKey: kp.adminKey,
				Extra: egress.APIServerFlags(file, []string{saIssuer, egress.DefaultAgentAudience}),
			})
			createWorkload(t, k, w.NodeAddr.String())

			// Through the tunnel.
			expectKubelet(t, k)

			// Agent gone: the same requests fail, promptly and with a reason.
			a.Kill()
			harness.WaitFor(t, 30*time.Second, "the server to notice the agent is gone", func() bool {
				return harness.HTTPStatus(s.ReadyURL()) != http.StatusOK
			})
			for _, path := range kubeletPaths() {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				status, body, err := k.Do(ctx, http.MethodGet, path, nil)
				cancel()
				if err != nil {
					t.Fatalf("GET %s with the agent away: no answer from kube-apiserver: %v", path, err)
				}
				// The reason reaches the operator: both the gRPC error and
				// CONNECT's status line name it.
				if status < 500 || !strings.Contains(string(body), "no agent available") {
					t.Fatalf("GET %s with the agent away: %d %s; want a 5xx error that says no agent is available", path, status, body)
				}
				t.Logf("agent away: GET %s -> %d %s", path, status, strings.TrimSpace(string(body)))
			}

			// Agent back: the same requests work again.
			a.Restart(t)
			s.WaitReady(t)
			expectKubelet(t, k)
		})
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

// createWorkload registers the worker as a Node at its address and binds a
// Pod to it.
func createWorkload(t *testing.T, k *harness.KubeAPIServer, nodeIP string) {
	t.Helper()
	objects := []struct{ path, body string }{
		{"/api/v1/nodes", fmt.Sprintf(`{"apiVersion":"v1","kind":"Node","metadata":{"name":%q},
			"status":{"addresses":[{"type":"InternalIP","address":%q}],"daemonEndpoints":{"kubeletEndpoint":{"Port":%d}}}}`,
			e2eNode, nodeIP, kubeletPort)},
		{"/api/v1/namespaces", fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q}}`, e2eNamespace)},
		{"/api/v1/namespaces/" + e2eNamespace + "/pods", fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q},
			"spec":{"nodeName":%q,"containers":[{"name":%q,"image":"registry.invalid/app:1"}]}}`, e2ePod, e2eNode, e2eContainer)},
	}
	for _, o := range objects {
		// A namespace just created may not be known to admission yet: retry.
		var status int
		var body []byte
		var err error
		for range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			status, body, err = k.Do(ctx, http.MethodPost, o.path, []byte(o.body))
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
}

// kubePKI is the control plane's own certificates, from one CA that also
// signs the kubelet's serving certificate.
type kubePKI struct {
	dir                                 string
	ca                                  string
	servingCert, servingKey             string
	adminCert, adminKey                 string
	kubeletClientCert, kubeletClientKey string
	kubeletCert, kubeletKey             string
	saPub, saKey                        string
}

func newKubePKI(t *testing.T, dir, nodeIP string) *kubePKI {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA("isthmus-e2e-kubernetes-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &kubePKI{dir: dir, ca: filepath.Join(dir, "ca.crt")}
	if err := certs.WriteFileAtomic(p.ca, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	issue := func(name string, r certs.Request, cert, key *string) {
		pair, err := ca.Issue(r)
		if err != nil {
			t.Fatal(err)
		}
		if *cert, *key, err = pair.WritePair(dir, name); err != nil {
			t.Fatal(err)
		}
	}
	issue("apiserver", certs.Request{CommonName: "kube-apiserver", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true}, &p.servingCert, &p.servingKey)
	issue("admin", certs.Request{CommonName: "isthmus-e2e-admin", Organization: []string{"system:masters"}, Client: true}, &p.adminCert, &p.adminKey)
	issue("apiserver-kubelet-client", certs.Request{CommonName: "kube-apiserver-kubelet-client",
		Organization: []string{"system:masters"}, Client: true}, &p.kubeletClientCert, &p.kubeletClientKey)
	issue("kubelet", certs.Request{CommonName: "system:node:" + e2eNode, IPs: []net.IP{net.ParseIP(nodeIP)}, Server: true}, &p.kubeletCert, &p.kubeletKey)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p.saKey, p.saPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := certs.WriteFileAtomic(p.saKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFileAtomic(p.saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// startFakeKubelet serves, inside the worker's namespace on the node's
// address, the two kubelet endpoints the test asks for, over HTTPS with a
// certificate from the cluster CA, and only to clients with a certificate
// from it (kube-apiserver's kubelet client certificate).
func startFakeKubelet(t *testing.T, w *harness.Worker, kp *kubePKI) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(kp.kubeletCert, kp.kubeletKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(kp.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	l, err := w.Listen("tcp", net.JoinHostPort(w.NodeAddr.String(), fmt.Sprint(kubeletPort)))
	if err != nil {
		t.Fatalf("fake kubelet: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprint(rw, kubeletHealth)
	})
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", func(rw http.ResponseWriter, r *http.Request) {
		if r.PathValue("ns") != e2eNamespace || r.PathValue("pod") != e2ePod || r.PathValue("container") != e2eContainer {
			http.Error(rw, "no such container", http.StatusNotFound)
			return
		}
		fmt.Fprint(rw, kubeletLogs)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("fake kubelet: %v", err)
		}
	})
}
