package harness

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB that keeps what a helper reports and its
// cleanups, to check what the helper does to the test that called it.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	cleanups []func()
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, strings.TrimSpace(fmt.Sprintf(format, args...)))
}
func (r *recorder) Logf(format string, args ...any) { r.TB.Logf(format, args...) }
func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs) > 0
}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) end() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// TestProcessPrintingASecretFails: a process that prints a registered
// token, a line of a registered key, or the base64 of a key file (as a
// kubeconfig embeds it) fails the test that started it at cleanup, and
// the report and the output shown name the secret without printing it.
// A process that prints none passes.
func TestProcessPrintingASecretFails(t *testing.T) {
	pki := NewPKI(t)
	token := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJlLW9mLXRoZS10ZXN0LXRva2VuLXNlY3JldA"
	RegisterSecret(t, "the scan test's token", token)
	key, err := os.ReadFile(pki.AgentKey)
	if err != nil {
		t.Fatal(err)
	}
	keyLine := strings.Split(string(key), "\n")[1]
	kubeconfigData := base64.StdEncoding.EncodeToString(key)
	for _, tc := range []struct {
		name, printed, secret, label string
	}{
		{"token", "level=INFO msg=connecting token=" + token, token, "the scan test's token"},
		{"token signature", "Authorization: Bearer ..." + strings.Split(token, ".")[2], strings.Split(token, ".")[2], "its signature"},
		{"key line", "key: " + keyLine, keyLine, "private key " + pki.AgentKey},
		{"kubeconfig", "client-key-data: " + kubeconfigData, kubeconfigData[64:128], "base64 of the file"},
		{"hex dump", "level=DEBUG msg=\"Request Body\" body=\"" + strings.ReplaceAll(hex.Dump([]byte("k8s\x00\x0a\x27TokenReview"+token+"\x12\x00")), "\n", `\n`) + "\"",
			token, "the scan test's token (in a hex dump)"},
		{"clean", "level=INFO msg=\"proxy-server started\" certificate=" + pki.AgentCert, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "out")
			if err := os.WriteFile(file, []byte("first line\n"+tc.printed+"\nlast line\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			r := &recorder{TB: t}
			p := Start(r, "printer", "cat", file)
			if err := p.Wait(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			r.end()
			if tc.secret == "" {
				if len(r.errs) != 0 {
					t.Fatalf("a process that printed no secret failed the test: %q", r.errs)
				}
				return
			}
			if len(r.errs) != 1 || !strings.Contains(r.errs[0], tc.label) || !strings.Contains(r.errs[0], "line 2") {
				t.Fatalf("want one failure naming %q in line 2, got %q", tc.label, r.errs)
			}
			if showsPart(r.errs[0], tc.secret) {
				t.Fatal("the failure message prints the secret")
			}
			if showsPart(checkSecrets(&recorder{TB: t}, "printer", tc.printed), tc.secret) {
				t.Fatal("the output shown of a test that failed prints the secret")
			}
		})
	}
}

func TestRegisterRefusesShortSecrets(t *testing.T) {
	r := &recorder{TB: t}
	defer func() {
		if recover() == nil {
			t.Fatal("a 5-byte secret was registered")
		}
	}()
	RegisterSecret(fatalPanics{r}, "short", "12345")
}

// fatalPanics turns Fatalf into a panic the test can recover.
type fatalPanics struct{ *recorder }

func (f fatalPanics) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

// TestKeyMaskCoversOnlyPrivateMaterial: for ECDSA, RSA (PKCS#8 and
// PKCS#1) and Ed25519 keys, the registered lines and pieces carry private
// material: a printed certificate, whose public key the key file holds
// too, and the start every key of a kind shares are not flagged; the key
// file itself is.
func TestKeyMaskCoversOnlyPrivateMaterial(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	for name, c := range map[string]struct {
		key crypto.Signer
		pem []byte
	}{
		"ecdsa":     {ec, pkcs8(ec)},
		"rsa pkcs8": {rk, pkcs8(rk)},
		"rsa pkcs1": {rk, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})},
		"ed25519":   {ed, pkcs8(ed)},
	} {
		RegisterKeyPEM(t, "mask test "+name, c.pem)
		if got := FindSecrets(string(c.pem)); len(got) == 0 {
			t.Errorf("%s: the key file printed is not found", name)
		}
		// Another key of the kind, printed whole and as base64, is not
		// taken for this one.
		other := c.pem
		switch c.key.(type) {
		case *ecdsa.PrivateKey:
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			other = pkcs8(k)
		case ed25519.PrivateKey:
			_, k, _ := ed25519.GenerateKey(rand.Reader)
			other = pkcs8(k)
		}
		if got := FindSecrets(string(other) + base64.StdEncoding.EncodeToString(other)); len(got) != 0 && name != "rsa pkcs8" && name != "rsa pkcs1" {
			t.Errorf("%s: another key of the kind is taken for this one: %q", name, got)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
		for shift := range 3 { // the public key at each alignment of base64
			tmpl.Subject.CommonName = strings.Repeat("x", shift+1)
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, c.key.Public(), c.key)
			if err != nil {
				t.Fatal(err)
			}
			cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
			pub, err := x509.MarshalPKIXPublicKey(c.key.Public())
			if err != nil {
				t.Fatal(err)
			}
			shifted := append(make([]byte, shift), pub...)
			printed := string(cert) + base64.StdEncoding.EncodeToString(cert) + "\n" +
				string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})) + base64.StdEncoding.EncodeToString(shifted)
			if got := FindSecrets(printed); len(got) != 0 {
				t.Errorf("%s: a certificate and public key printed are taken for the private key: %q", name, got)
			}
		}
	}
}

// showsPart reports whether s holds 16 bytes in a row of secret (a hex
// dump's text column shows 16 at a time).
func showsPart(s, secret string) bool {
	for i := 0; i+16 <= len(secret); i++ {
		if strings.Contains(s, secret[i:i+16]) {
			return true
		}
	}
	return false
}
