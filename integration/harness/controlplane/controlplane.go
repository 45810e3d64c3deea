// Package controlplane runs a real Kubernetes control plane for the
// end-to-end tests: etcd, kube-apiserver (harness.KubeAPIServerBinary) and
// an administrator's client-go clientset, with helpers for the objects the
// tunnel's deployments use (namespaces, service accounts and their tokens,
// RBAC, kubeconfigs). It is a package of its own so that client-go stays
// out of the test binaries that need no control plane.
package controlplane

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"isthmus.dev/integration/harness"
)

// Issuer is the service-account token issuer of every control plane here;
// tokens minted without an audience are for it.
const Issuer = "https://kubernetes.default.svc"

// Opts describe a control plane to start.
type Opts struct {
	EtcdURL    string           // "": start an etcd for this control plane
	EtcdPrefix string           // keeps control planes sharing one etcd apart; "": a unique one
	PKI        *harness.KubePKI // nil: a new one
	// APIAudiences: kube-apiserver's --api-audiences; nil: Issuer only.
	APIAudiences []string
	// Extra: more kube-apiserver flags, e.g. the egress configuration.
	Extra []string
}

// ControlPlane is a running kube-apiserver and its administrator.
type ControlPlane struct {
	PKI    *harness.KubePKI
	API    *harness.KubeAPIServer
	Config *rest.Config         // the administrator (system:masters)
	Client kubernetes.Interface // from Config
}

var prefixSeq atomic.Int32

// Require skips t unless a control plane can run here (harness.RequireKube)
// and the tests are not -short.
func Require(t testing.TB) {
	t.Helper()
	harness.RequireKube(t)
	if testing.Short() {
		t.Skip("builds and runs a real kube-apiserver: not in -short")
	}
}

// Start starts a control plane; it ends at t's cleanup.
func Start(t testing.TB, o Opts) *ControlPlane {
	t.Helper()
	Require(t)
	bin := harness.KubeAPIServerBinary(t)
	if o.EtcdURL == "" {
		o.EtcdURL = harness.StartEtcd(t)
	}
	if o.EtcdPrefix == "" {
		o.EtcdPrefix = "/isthmus-" + strconv.Itoa(int(prefixSeq.Add(1)))
	}
	if o.PKI == nil {
		o.PKI = harness.NewKubePKI(t, filepath.Join(t.TempDir(), "kube"))
	}
	audiences := o.APIAudiences
	if audiences == nil {
		audiences = []string{Issuer}
	}
	p := o.PKI
	api := harness.StartKubeAPIServer(t, harness.KubeAPIServerOpts{
		Bin: bin, EtcdURL: o.EtcdURL, EtcdPrefix: o.EtcdPrefix,
		ServingCert: p.ServingCert, ServingKey: p.ServingKey, ClientCA: p.CA,
		KubeletCA: p.CA, KubeletCert: p.KubeletClientCert, KubeletKey: p.KubeletClientKey,
		SAPublicKey: p.SAPub, SASigningKey: p.SAKey, SAIssuer: Issuer,
		AdminCert: p.AdminCert, AdminKey: p.AdminKey,
		Extra: append([]string{"--api-audiences=" + strings.Join(audiences, ",")}, o.Extra...),
	})
	cp := &ControlPlane{PKI: p, API: api, Config: restConfig(t, api.URL, p.CA, p.AdminCert, p.AdminKey)}
	var err error
	if cp.Client, err = kubernetes.NewForConfig(cp.Config); err != nil {
		t.Fatalf("administrator's clientset: %v", err)
	}
	cp.waitBootstrapped(t)
	return cp
}

// restConfig is a client-go configuration for a client certificate. The
// files are read here: given as file names, client-go would start a
// certificate-reloading goroutine that never ends.
func restConfig(t testing.TB, host, ca, cert, key string) *rest.Config {
	t.Helper()
	read := func(f string) []byte {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return &rest.Config{
		Host:            host,
		TLSClientConfig: rest.TLSClientConfig{CAData: read(ca), CertData: read(cert), KeyData: read(key)},
		QPS:             100, Burst: 200,
		Timeout: 30 * time.Second,
	}
}

// waitBootstrapped waits for what kube-apiserver creates after /readyz
// that the tests rely on: the kube-system namespace and the
// system:auth-delegator cluster role.
func (cp *ControlPlane) waitBootstrapped(t testing.TB) {
	t.Helper()
	harness.WaitFor(t, time.Minute, "kube-system and system:auth-delegator", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := cp.Client.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
			return false
		}
		_, err := cp.Client.RbacV1().ClusterRoles().Get(ctx, "system:auth-delegator", metav1.GetOptions{})
		return err == nil
	})
}

// ShowLogOnFailure logs the tail of kube-apiserver's output at t's end if
// t failed: for tests on a Shared control plane, whose process outlives
// them.
func (cp *ControlPlane) ShowLogOnFailure(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			out := strings.Split(cp.API.Output(), "\n")
			t.Logf("--- last lines of the shared kube-apiserver's output:\n%s", strings.Join(out[max(0, len(out)-60):], "\n"))
		}
	})
}

// LeakOptions are the goroutines a test that used client-go may leave:
// client-go keeps its transports (and their idle connections) in a
// process-wide cache.
var LeakOptions = []goleak.Option{
	goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
	goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
	goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*clientConnReadLoop).run"),
	goleak.IgnoreAnyFunction("net/http.(*http2ClientConn).readLoop"),
	goleak.IgnoreAnyFunction("net/http.(*http2clientConnReadLoop).run"),
}

var (
	sharedEtcd  harness.Shared[string]
	sharedPKI   harness.Shared[*harness.KubePKI]
	sharedPlane harness.Shared[*ControlPlane]
)

// SharedEtcd is one etcd for the whole test process.
func SharedEtcd(t testing.TB) string {
	t.Helper()
	harness.RequireKube(t)
	return sharedEtcd.Get(t, harness.StartEtcd)
}

// SharedPKI is one control-plane PKI for the whole test process.
func SharedPKI(t testing.TB) *harness.KubePKI {
	t.Helper()
	return sharedPKI.Get(t, func(s testing.TB) *harness.KubePKI {
		return harness.NewKubePKI(s, filepath.Join(s.TempDir(), "kube"))
	})
}

// Shared is one control plane for the whole test process (no egress
// configuration), started by the first test that asks and stopped after
// the last: tests on it make their own namespaces and identities.
func Shared(t testing.TB) *ControlPlane {
	t.Helper()
	Require(t)
	etcd, pki := SharedEtcd(t), SharedPKI(t)
	cp := sharedPlane.Get(t, func(s testing.TB) *ControlPlane {
		return Start(s, Opts{EtcdURL: etcd, PKI: pki})
	})
	cp.ShowLogOnFailure(t)
	return cp
}
