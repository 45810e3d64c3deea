package kubeconfig

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"isthmus.dev/certs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRenderedKubeconfigAuthenticates renders a kubeconfig and uses it
// through client-go against a TLS server that requires a client
// certificate from the cluster CA, as kube-apiserver does.
func TestRenderedKubeconfigAuthenticates(t *testing.T) {
	srv, b := kubeTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello "+r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	rc, err := clientcmd.RESTConfigFromKubeConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello "+certs.KubeconfigUser {
		t.Fatalf("answer %q", body)
	}

	// Its certificates, for the expiry check.
	path := filepath.Join(t.TempDir(), "proxy-server.kubeconfig")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	srcs, err := Certificates(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) != 2 || !strings.HasSuffix(srcs[0].Name, "cluster kubernetes") || srcs[1].Certs[0].Subject.CommonName != certs.KubeconfigUser {
		t.Fatalf("certificates: %+v", srcs)
	}
}

func TestRenderRefuses(t *testing.T) {
	ca, err := certs.NewCAFor(certs.CARequest{})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(certs.ClientRequest("u"))
	if err != nil {
		t.Fatal(err)
	}
	sr, _ := certs.ServerRequest("s", []string{"x.example"})
	server, err := ca.Issue(sr)
	if err != nil {
		t.Fatal(err)
	}
	good := Config{Server: "https://10.0.0.1:6443", ServerCA: ca.CertPEM, ClientCert: client.CertPEM, ClientKey: client.KeyPEM}
	for name, mod := range map[string]func(*Config){
		"http":          func(c *Config) { c.Server = "http://10.0.0.1:6443" },
		"no host":       func(c *Config) { c.Server = "https://" },
		"no CA":         func(c *Config) { c.ServerCA = nil },
		"key mismatch":  func(c *Config) { c.ClientKey = server.KeyPEM },
		"server cert":   func(c *Config) { c.ClientCert, c.ClientKey = server.CertPEM, server.KeyPEM },
		"CA is garbage": func(c *Config) { c.ServerCA = []byte("x") },
	} {
		c := good
		mod(&c)
		if _, err := Render(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Render(good); err != nil {
		t.Fatal(err)
	}
}

// kubeTLS serves handler over HTTPS the way kube-apiserver does: a serving
// certificate from a cluster CA, and a client certificate from it required.
// It returns the server (closed at cleanup) and the kubeconfig Render makes
// for it, with a client certificate of certs.KubeconfigUser.
func kubeTLS(t *testing.T, handler http.Handler) (*httptest.Server, []byte) {
	t.Helper()
	kubeCA, err := certs.NewCAFor(certs.CARequest{CommonName: "kubernetes"})
	if err != nil {
		t.Fatal(err)
	}
	servingReq, err := certs.ServerRequest("kube-apiserver", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := kubeCA.Issue(servingReq)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubeCA.Issue(certs.ClientRequest(certs.KubeconfigUser))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(serving.CertPEM, serving.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(kubeCA.Cert)
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	b, err := Render(Config{Server: srv.URL, ServerCA: kubeCA.CertPEM, ClientCert: client.CertPEM, ClientKey: client.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	return srv, b
}
