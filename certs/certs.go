// Package certs is isthmus's PKI: a CA, and the certificates it issues to
// the proxy-server (agent port, frontend), to agents and to kube-apiserver;
// expiry checks; and a TLS configuration that re-reads its certificates
// from disk when they change (Reloader), for the server and the agent.
//
// Keys are ECDSA P-256 unless RSA is asked for. Files are written
// atomically, keys with mode 0600, and never over an existing file unless
// the caller says so (WriteFiles).
//
// The proxy-server's kubeconfig lives in the subpackage kubeconfig, so that
// importing this package does not pull in client-go.
package certs

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DefaultValidity of issued certificates; CAs get DefaultCAValidity.
const (
	DefaultValidity   = 365 * 24 * time.Hour
	DefaultCAValidity = 10 * DefaultValidity
)

// backdate is how far before "now" a certificate becomes valid, so that
// peers with slightly slow clocks accept it at once.
const backdate = time.Minute

// CA is a certificate authority able to issue certificates.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// CARequest describes a CA to create.
type CARequest struct {
	// CommonName of the CA; "" means "isthmus-ca".
	CommonName string
	// Validity from NotBefore; 0 means DefaultCAValidity.
	Validity time.Duration
	// NotBefore; zero means one minute ago.
	NotBefore time.Time
	// Key to generate; the zero value is ECDSA P-256.
	Key KeySpec
}

// NewCA creates a self-signed ECDSA P-256 CA; validity 0 means
// DefaultCAValidity. NewCAFor takes every option.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	return NewCAFor(CARequest{CommonName: commonName, Validity: validity})
}

// NewCAFor creates a self-signed CA.
func NewCAFor(r CARequest) (*CA, error) {
	if r.CommonName == "" {
		r.CommonName = "isthmus-ca"
	}
	if r.Validity <= 0 {
		r.Validity = DefaultCAValidity
	}
	notBefore := r.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-backdate)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: r.CommonName},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(r.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	p, key, err := create(tmpl, r.Key, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("create CA %q: %w", r.CommonName, err)
	}
	return &CA{Cert: p.Cert, Key: key, CertPEM: p.CertPEM, KeyPEM: p.KeyPEM}, nil
}

// create makes a key of spec and a certificate from tmpl, signed by
// parent's key (self-signed when parent is nil).
func create(tmpl *x509.Certificate, spec KeySpec, parent *x509.Certificate, parentKey crypto.Signer) (*Pair, crypto.Signer, error) {
	key, err := spec.generate()
	if err != nil {
		return nil, nil, err
	}
	if _, ok := key.(*rsa.PrivateKey); ok && !tmpl.IsCA {
		// TLS 1.2 RSA key exchange needs it; harmless otherwise.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if tmpl.SerialNumber, err = serialNumber(); err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return &Pair{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: keyPEM}, key, nil
}

// LoadCA reads a CA's certificate and key from PEM files. The key may be
// PKCS#8, PKCS#1 or SEC 1 (so kubeadm's /etc/kubernetes/pki/ca.key works);
// it must match the certificate, and the certificate must be a CA allowed
// to sign certificates.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	certs, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certFile, err)
	}
	cert := certs[0]
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("CA certificate %s: %q is not a CA allowed to sign certificates", certFile, cert.Subject.CommonName)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyFile, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("CA key %s does not belong to the certificate %s", keyFile, certFile)
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Request describes a certificate to issue.
type Request struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	Server       bool // extended key usage serverAuth
	Client       bool // extended key usage clientAuth
	// Validity from NotBefore; 0 means DefaultValidity. The certificate
	// never outlives its CA: NotAfter is capped at the CA's.
	Validity time.Duration
	// NotBefore; zero means one minute ago.
	NotBefore time.Time
	// Key to generate; the zero value is ECDSA P-256.
	Key KeySpec
}

// Pair is an issued certificate and its key, PEM encoded.
type Pair struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// Issue creates a certificate signed by ca.
func (ca *CA) Issue(r Request) (*Pair, error) {
	if !r.Server && !r.Client {
		return nil, errors.New("issue: a certificate must be for a server, a client or both")
	}
	if r.Server && len(r.DNSNames) == 0 && len(r.IPs) == 0 {
		return nil, fmt.Errorf("issue %q: a server certificate needs at least one DNS name or IP address", r.CommonName)
	}
	if r.Validity <= 0 {
		r.Validity = DefaultValidity
	}
	notBefore := r.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-backdate)
	}
	notAfter := notBefore.Add(r.Validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: r.CommonName, Organization: r.Organization},
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		DNSNames:    r.DNSNames,
		IPAddresses: r.IPs,
	}
	if r.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if r.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	p, _, err := create(tmpl, r.Key, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue %q: %w", r.CommonName, err)
	}
	return p, nil
}

// WritePair writes name.crt (0644) and name.key (0600) into dir, atomically,
// replacing files of those names.
func (p *Pair) WritePair(dir, name string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := WriteFiles(p.Files(certFile, keyFile), true); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// Files are the certificate (0644) and key (0600) files of p, for WriteFiles.
func (p *Pair) Files(certFile, keyFile string) []File {
	return []File{
		{Path: keyFile, Data: p.KeyPEM, Mode: 0o600},
		{Path: certFile, Data: p.CertPEM, Mode: 0o644},
	}
}

// Files are the certificate (0644) and key (0600) files of ca.
func (ca *CA) Files(certFile, keyFile string) []File {
	return (&Pair{CertPEM: ca.CertPEM, KeyPEM: ca.KeyPEM}).Files(certFile, keyFile)
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
