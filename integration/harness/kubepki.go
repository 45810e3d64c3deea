package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"isthmus.dev/certs"
)

// KubePKI is a control plane's own certificates, from one CA that also
// signs the kubelets' serving certificates and the client certificates of
// the identities the tests create (proxy-server's, agents').
type KubePKI struct {
	Dir                                 string
	CA                                  string // the CA certificate (kube-apiserver --client-ca-file)
	ServingCert, ServingKey             string // kube-apiserver on 127.0.0.1
	AdminCert, AdminKey                 string // system:masters
	KubeletClientCert, KubeletClientKey string // kube-apiserver toward kubelets
	SAPub, SAKey                        string // service-account token signing
	// FrontProxyCA signs ProxyClientCert, the certificate kube-apiserver's
	// aggregator presents to aggregated API servers (--proxy-client-cert-file),
	// which trust it through --requestheader-client-ca-file. A CA of its
	// own, as kubeadm's front-proxy-ca: a client certificate from the main
	// CA must not be able to assert X-Remote-User.
	FrontProxyCA                    string
	ProxyClientCert, ProxyClientKey string
	ca                              *certs.CA
	seq                             atomic.Int32
}

// NewKubePKI creates the CA and the control plane's certificates in dir.
func NewKubePKI(t testing.TB, dir string) *KubePKI {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA("isthmus-e2e-kubernetes-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	RegisterKeyPEM(t, "the Kubernetes CA's key", ca.KeyPEM)
	p := &KubePKI{Dir: dir, CA: filepath.Join(dir, "ca.crt"), ca: ca}
	if err := certs.WriteFileAtomic(p.CA, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p.ServingCert, p.ServingKey = p.issue(t, "apiserver", certs.Request{CommonName: "kube-apiserver",
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	p.AdminCert, p.AdminKey = p.ClientCert(t, "admin", AdminUser, "system:masters")
	p.KubeletClientCert, p.KubeletClientKey = p.ClientCert(t, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
	p.SAKey, p.SAPub = writeSAKeys(t, dir)
	fp, err := certs.NewCA("isthmus-e2e-front-proxy-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	RegisterKeyPEM(t, "the front-proxy CA's key", fp.KeyPEM)
	p.FrontProxyCA = filepath.Join(dir, "front-proxy-ca.crt")
	if err := certs.WriteFileAtomic(p.FrontProxyCA, fp.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	pair, err := fp.Issue(certs.Request{CommonName: FrontProxyClient, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	RegisterKeyPEM(t, "the front-proxy client's key", pair.KeyPEM)
	if p.ProxyClientCert, p.ProxyClientKey, err = pair.WritePair(dir, "front-proxy-client"); err != nil {
		t.Fatal(err)
	}
	return p
}

// AdminUser is the user name of the administrator's certificate
// (KubePKI.AdminCert).
const AdminUser = "isthmus-e2e-admin"

// FrontProxyClient is the common name of the aggregator's client
// certificate (kube-apiserver --requestheader-allowed-names).
const FrontProxyClient = "front-proxy-client"

// AggregationFlags are the kube-apiserver flags of API aggregation as
// kubeadm sets them: the aggregator's client certificate and the request
// headers aggregated servers (and webhooks) may trust.
func (p *KubePKI) AggregationFlags() []string {
	return []string{
		"--requestheader-client-ca-file=" + p.FrontProxyCA,
		"--requestheader-allowed-names=" + FrontProxyClient,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.ProxyClientCert,
		"--proxy-client-key-file=" + p.ProxyClientKey,
	}
}

// ServiceServing issues the serving certificate of Service name in
// namespace ns, for the name kube-apiserver verifies when it calls a
// webhook or an aggregated API server through a Service reference:
// <name>.<ns>.svc.
func (p *KubePKI) ServiceServing(t testing.TB, name, ns string) (cert, key string) {
	t.Helper()
	return p.issue(t, "svc-"+name+"-"+ns, certs.Request{CommonName: name + "." + ns + ".svc",
		DNSNames: []string{name + "." + ns + ".svc"}, Server: true})
}

// ClientCert issues a client certificate for user (its groups as
// organizations) into the PKI's directory.
func (p *KubePKI) ClientCert(t testing.TB, name, user string, groups ...string) (cert, key string) {
	t.Helper()
	return p.issue(t, name, certs.Request{CommonName: user, Organization: groups, Client: true})
}

// KubeletCert issues the serving certificate of node's kubelet at ip.
func (p *KubePKI) KubeletCert(t testing.TB, node, ip string) (cert, key string) {
	t.Helper()
	return p.issue(t, "kubelet-"+node+"-"+ip, certs.Request{CommonName: "system:node:" + node,
		IPs: []net.IP{net.ParseIP(ip)}, Server: true})
}

// IssueServing issues a serving certificate for the addresses ips, as
// kubeadm's apiserver.crt (which proxy-server serves its agent port with in
// kubeadm's konnectivity guide) is one.
func (p *KubePKI) IssueServing(t testing.TB, name string, ips ...string) (cert, key string) {
	t.Helper()
	r := certs.Request{CommonName: name, Server: true}
	for _, ip := range ips {
		r.IPs = append(r.IPs, net.ParseIP(ip))
	}
	return p.issue(t, name, r)
}

// issue writes name-<n>.crt and .key: tests sharing the PKI may issue the
// same name at once. The key is registered as a secret (secrets.go).
func (p *KubePKI) issue(t testing.TB, name string, r certs.Request) (cert, key string) {
	t.Helper()
	pair, err := p.ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	name += "-" + strconv.Itoa(int(p.seq.Add(1)))
	RegisterKeyPEM(t, "the private key of "+name, pair.KeyPEM)
	if cert, key, err = pair.WritePair(p.Dir, name); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// writeSAKeys writes the service-account signing key and its public half.
func writeSAKeys(t testing.TB, dir string) (private, public string) {
	t.Helper()
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
	private, public = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	RegisterKeyPEM(t, "the service-account signing key", keyPEM)
	if err := certs.WriteFileAtomic(private, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFileAtomic(public, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		t.Fatal(err)
	}
	return private, public
}
