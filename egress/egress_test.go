package egress

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/server/egressselector"

	"isthmus.dev/certs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func bundle(t *testing.T) *certs.Bundle {
	t.Helper()
	b, err := certs.NewBundle(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tcpConfig(b *certs.Bundle) Config {
	return Config{
		Mode: ModeHTTPConnect, Transport: TransportTCP, URL: "https://127.0.0.1:8131",
		CABundle: b.CACert, ClientCert: b.ClientCert, ClientKey: b.ClientKey,
	}
}

func selection(t *testing.T, cfg *apiserver.EgressSelectorConfiguration, name string) *apiserver.Connection {
	t.Helper()
	for _, s := range cfg.EgressSelections {
		if s.Name == name {
			return &s.Connection
		}
	}
	return nil
}

// TestRenderEveryKind renders the three connection kinds, loads each with
// kube-apiserver's loader and builds its dialer.
func TestRenderEveryKind(t *testing.T) {
	b := bundle(t)
	sock := "/run/isthmus/konnectivity-server.sock"
	for _, tc := range []struct {
		name     string
		cfg      Config
		protocol apiserver.ProtocolType
		check    func(*apiserver.Transport) bool
	}{
		{"grpc/uds", Config{UDSName: sock}, apiserver.ProtocolGRPC,
			func(tr *apiserver.Transport) bool { return tr.UDS != nil && tr.UDS.UDSName == sock && tr.TCP == nil }},
		{"http-connect/uds", Config{Mode: ModeHTTPConnect, UDSName: sock}, apiserver.ProtocolHTTPConnect,
			func(tr *apiserver.Transport) bool { return tr.UDS != nil && tr.UDS.UDSName == sock }},
		{"http-connect/tcp", tcpConfig(b), apiserver.ProtocolHTTPConnect,
			func(tr *apiserver.Transport) bool {
				return tr.TCP != nil && tr.TCP.URL == "https://127.0.0.1:8131" && tr.TCP.TLSConfig.ClientCert == b.ClientCert &&
					tr.TCP.TLSConfig.ClientKey == b.ClientKey && tr.TCP.TLSConfig.CABundle == b.CACert
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Render(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), "apiVersion: apiserver.k8s.io/v1beta1") || !strings.Contains(string(out), "kind: EgressSelectorConfiguration") {
				t.Errorf("rendered:\n%s", out)
			}
			path := filepath.Join(t.TempDir(), "egress.yaml")
			if err := os.WriteFile(path, out, 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := egressselector.ReadEgressSelectorConfiguration(path)
			if err != nil {
				t.Fatalf("kube-apiserver's loader: %v\n%s", err, out)
			}
			if errs := egressselector.ValidateEgressSelectorConfiguration(cfg); len(errs) > 0 {
				t.Fatalf("kube-apiserver's validation: %v", errs)
			}
			cluster := selection(t, cfg, "cluster")
			if cluster == nil || cluster.ProxyProtocol != tc.protocol || cluster.Transport == nil || !tc.check(cluster.Transport) {
				t.Fatalf("cluster selection %+v\n%s", cluster, out)
			}
			for _, name := range []string{"controlplane", "etcd"} {
				if c := selection(t, cfg, name); c == nil || c.ProxyProtocol != apiserver.ProtocolDirect || c.Transport != nil {
					t.Errorf("%s selection %+v, want explicitly Direct", name, c)
				}
			}
			if _, err := NewDialerFromFile(path); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRenderRoutes(t *testing.T) {
	out, err := Render(Config{Mode: ModeHTTPConnect, UDSName: "/run/p.sock", ControlPlane: RouteProxy, Etcd: RouteOmit})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadBytes(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.EgressSelections) != 2 {
		t.Fatalf("selections %+v", cfg.EgressSelections)
	}
	if c := selection(t, cfg, "controlplane"); c == nil || c.ProxyProtocol != apiserver.ProtocolHTTPConnect || c.Transport.UDS.UDSName != "/run/p.sock" {
		t.Errorf("controlplane %+v", c)
	}
}

// TestRenderRefuses: what kube-apiserver refuses, crashes on or cannot
// use is refused with a message that says why.
func TestRenderRefuses(t *testing.T) {
	b := bundle(t)
	dir := t.TempDir()
	expired := filepath.Join(dir, "expired")
	writeExpiredClient(t, b, expired)
	long := "/" + strings.Repeat("x", 120) + ".sock"
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"grpc over tcp", func() Config { c := tcpConfig(b); c.Mode = ModeGRPC; return c }(), "only over a Unix socket"},
		{"http url", func() Config { c := tcpConfig(b); c.URL = "http://127.0.0.1:8131"; return c }(), "crashes it at start-up"},
		{"ftp url", func() Config { c := tcpConfig(b); c.URL = "ftp://127.0.0.1:8131"; return c }(), "supported connection protocols"},
		{"no port", func() Config { c := tcpConfig(b); c.URL = "https://127.0.0.1"; return c }(), "want https://host:port"},
		{"path in url", func() Config { c := tcpConfig(b); c.URL = "https://127.0.0.1:8131/x"; return c }(), "drop the rest"},
		{"missing client cert", func() Config { c := tcpConfig(b); c.ClientCert = filepath.Join(dir, "nope.crt"); return c }(), "no such file"},
		{"missing CA bundle", func() Config { c := tcpConfig(b); c.CABundle = filepath.Join(dir, "nope.crt"); return c }(), "caBundle: stat"},
		{"no client cert", func() Config { c := tcpConfig(b); c.ClientCert, c.ClientKey = "", ""; return c }(), "mutual TLS"},
		{"relative client key", func() Config { c := tcpConfig(b); c.ClientKey = "pki/client.key"; return c }(), "relative"},
		{"key of another pair", func() Config { c := tcpConfig(b); c.ClientKey = b.AgentKey; return c }(), "private key does not match"},
		{"server certificate as client", func() Config { c := tcpConfig(b); c.ClientCert, c.ClientKey = b.FrontendCert, b.FrontendKey; return c }(), "not a client certificate"},
		{"expired client certificate", func() Config { c := tcpConfig(b); c.ClientCert, c.ClientKey = expired+".crt", expired+".key"; return c }(), "expired at"},
		{"relative socket", Config{UDSName: "run/konnectivity.sock"}, "relative"},
		{"unix:// socket", Config{UDSName: "unix:///run/k.sock"}, "without unix://"},
		{"long socket", Config{UDSName: long}, "at most 107"},
		{"url with uds", Config{UDSName: "/run/k.sock", URL: "https://x:1"}, "for transport tcp"},
		{"bad mode", Config{Mode: "grpc-tcp"}, "allowed are"},
		{"bad transport", Config{Transport: "quic"}, "allowed are"},
		{"bad route", Config{Etcd: "maybe"}, "etcd route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func writeExpiredClient(t *testing.T, b *certs.Bundle, base string) {
	t.Helper()
	ca, err := certs.LoadCA(b.CACert, b.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	r := certs.ClientRequest("old")
	r.NotBefore, r.Validity = time.Now().Add(-48*time.Hour), 24*time.Hour
	p, err := ca.Issue(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFiles(p.Files(base+".crt", base+".key"), false); err != nil {
		t.Fatal(err)
	}
}

// TestLoadHandWritten: configurations written by hand, including the one
// that passes kube-apiserver's validation and then crashes it.
func TestLoadHandWritten(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "egress.yaml")
		if err := os.WriteFile(p, []byte("apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n"+body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	httpURL := write(`- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      tcp:
        url: http://127.0.0.1:8131
`)
	// The upstream fact this package guards against.
	cfg, err := egressselector.ReadEgressSelectorConfiguration(httpURL)
	if err != nil {
		t.Fatal(err)
	}
	if errs := egressselector.ValidateEgressSelectorConfiguration(cfg); len(errs) != 0 {
		t.Fatalf("kube-apiserver's validation now refuses an http:// URL (%v): the extra check may go", errs)
	}
	if !panics(func() { _, _ = egressselector.NewEgressSelector(cfg) }) {
		t.Fatal("kube-apiserver's egress selector no longer panics on an http:// URL")
	}
	if _, err := Load(httpURL); err == nil || !strings.Contains(err.Error(), "crashes") {
		t.Fatalf("http:// URL: %v", err)
	}

	for _, tc := range []struct {
		name, body, want string
	}{
		{"grpc over tcp", "- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n", "only over a Unix socket"},
		{"cluster direct", "- name: cluster\n  connection:\n    proxyProtocol: Direct\n", "directly"},
		{"no cluster", "- name: etcd\n  connection:\n    proxyProtocol: Direct\n", "no egress selection named cluster"},
		{"unknown field", "- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: /run/k.sock\n        mode: x\n",
			`line 10: unknown key "egressSelections[0].connection.transport.uds.mode"`},
		{"key case", "- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        UDSName: /run/k.sock\n",
			`line 9: unknown key "egressSelections[0].connection.transport.uds.UDSName": keys are case-sensitive: did you mean "udsName"?`},
		{"duplicate key", "- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    proxyProtocol: Direct\n",
			`line 7: duplicate key "egressSelections[0].connection.proxyProtocol": first at line 6`},
		{"duplicate", "- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: /run/k.sock\n- name: cluster\n  connection:\n    proxyProtocol: Direct\n", "Duplicate"},
		{"no transport", "- name: cluster\n  connection:\n    proxyProtocol: GRPC\n", "transport must be set"},
	} {
		if _, err := Load(write(tc.body)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	// The deprecated name "master" is kube-apiserver's controlplane.
	cfg, err = Load(write("- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: /run/k.sock\n- name: master\n  connection:\n    proxyProtocol: Direct\n"))
	if err != nil || selection(t, cfg, "controlplane") == nil {
		t.Fatalf("master: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file: no error")
	}
}

func panics(f func()) (p bool) {
	defer func() { p = recover() != nil }()
	f()
	return false
}

func TestAPIServerFlags(t *testing.T) {
	got := APIServerFlags("/etc/kubernetes/egress.yaml", []string{DefaultServiceAccountIssuer, DefaultAgentAudience, DefaultAgentAudience, " "})
	want := []string{
		"--egress-selector-config-file=/etc/kubernetes/egress.yaml",
		"--api-audiences=https://kubernetes.default.svc.cluster.local,system:konnectivity-server",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestDialerContext: a proxy-server that never answers the CONNECT does
// not hold DialContext past its context; the abandoned dial ends when the
// proxy goes away.
func TestDialerContext(t *testing.T) {
	sockDir, err := os.MkdirTemp("", "egress-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "p.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	out, err := Render(Config{Mode: ModeHTTPConnect, UDSName: sock})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadBytes(out)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDialer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.DialContext(context.Background(), "udp", "10.0.0.1:53"); err == nil || !strings.Contains(err.Error(), "only tcp") {
		t.Errorf("udp: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = d.DialContext(ctx, "tcp", "10.0.0.1:10250")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("dial against a silent proxy: %v after %v", err, time.Since(start))
	}
	ln.Close()
	if c := <-accepted; c != nil {
		c.Close() // the abandoned dial reads EOF and ends
	}
}

func TestNewDialerRefuses(t *testing.T) {
	if _, err := NewDialer(nil); err == nil {
		t.Error("nil configuration accepted")
	}
	direct := &apiserver.EgressSelectorConfiguration{EgressSelections: []apiserver.EgressSelection{{Name: "cluster", Connection: apiserver.Connection{ProxyProtocol: apiserver.ProtocolDirect}}}}
	if _, err := NewDialer(direct); err == nil {
		t.Error("Direct cluster accepted")
	}
	none := &apiserver.EgressSelectorConfiguration{EgressSelections: []apiserver.EgressSelection{{Name: "etcd", Connection: apiserver.Connection{ProxyProtocol: apiserver.ProtocolDirect}}}}
	if _, err := NewDialer(none); err == nil {
		t.Error("configuration without cluster accepted")
	}
}
