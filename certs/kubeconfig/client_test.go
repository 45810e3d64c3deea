package kubeconfig

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeAPIServer is a TLS server that, like kube-apiserver, requires a client
// certificate from the cluster CA. It answers every TokenReview as
// authenticated and records the requests' headers.
type fakeAPIServer struct {
	*httptest.Server
	kubeconfig string

	mu      sync.Mutex
	headers []http.Header
}

func startFakeAPIServer(t *testing.T) *fakeAPIServer {
	t.Helper()
	f := &fakeAPIServer{}
	var b []byte
	f.Server, b = kubeTLS(t, http.HandlerFunc(f.serve))
	f.kubeconfig = filepath.Join(t.TempDir(), "proxy-server.kubeconfig")
	if err := os.WriteFile(f.kubeconfig, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeAPIServer) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.headers = append(f.headers, r.Header.Clone())
	f.mu.Unlock()
	if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
		http.NotFound(w, r)
		return
	}
	tr := authv1.TokenReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
		Status: authv1.TokenReviewStatus{Authenticated: true,
			User: authv1.UserInfo{Username: "system:serviceaccount:kube-system:konnectivity-agent"}},
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(tr)
}

func TestNewClientsetUsesTheOptions(t *testing.T) {
	f := startFakeAPIServer(t)
	cs, err := NewClientset(ClientOptions{Path: f.kubeconfig, QPS: 50, Burst: 100,
		ContentType: "application/vnd.kubernetes.protobuf", UserAgent: "proxy-server/v9.9.9"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := cs.AuthenticationV1().TokenReviews().Create(t.Context(),
		&authv1.TokenReview{Spec: authv1.TokenReviewSpec{Token: "t"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Status.Authenticated || res.Status.User.Username != "system:serviceaccount:kube-system:konnectivity-agent" {
		t.Fatalf("review: %+v", res.Status)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.headers) != 1 {
		t.Fatalf("%d requests, want 1", len(f.headers))
	}
	h := f.headers[0]
	if got := h.Get("User-Agent"); got != "proxy-server/v9.9.9" {
		t.Errorf("User-Agent %q", got)
	}
	if got := h.Get("Content-Type"); got != "application/vnd.kubernetes.protobuf" {
		t.Errorf("Content-Type %q", got)
	}
}

func TestRESTConfig(t *testing.T) {
	f := startFakeAPIServer(t)
	cfg, err := RESTConfig(ClientOptions{Path: f.kubeconfig})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != f.URL || cfg.QPS != 0 || cfg.Burst != 0 || cfg.ContentType != "" {
		t.Errorf("defaults: host %s qps %v burst %d content type %q", cfg.Host, cfg.QPS, cfg.Burst, cfg.ContentType)
	}
	for _, tc := range []struct {
		name string
		o    ClientOptions
		want string
	}{
		{"missing file", ClientOptions{Path: filepath.Join(t.TempDir(), "nope")}, "--kubeconfig"},
		{"negative qps", ClientOptions{Path: f.kubeconfig, QPS: -1}, "--kubeconfig-qps"},
	} {
		if _, err := RESTConfig(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
	// Not a pod: the error says to set --kubeconfig.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if _, err := NewClientset(ClientOptions{}); err == nil || !strings.Contains(err.Error(), "set --kubeconfig") {
		t.Errorf("outside a pod without --kubeconfig: %v", err)
	}
}
