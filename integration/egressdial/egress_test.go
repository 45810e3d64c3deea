// Package egressdial tests kube-apiserver's own egress dialer through a
// running proxy-server and a real proxy-agent. It is a package of its own
// so that k8s.io/apiserver (and its init) stays out of the other
// integration test binaries.
package egressdial

// kube-apiserver's own egress dialer through a running proxy-server and a
// real proxy-agent: every configuration `isthmus egress render` writes is
// read with k8s.io/apiserver's ReadEgressSelectorConfiguration, validated,
// turned into its egress selector, and the `cluster` dialer looked up from
// it carries an echo exchange, an HTTPS request (what a kubelet call is)
// and a refused dial, in each connection kind kube-apiserver supports.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/server/egressselector"

	"isthmus.dev/certs"
	"isthmus.dev/egress"
	"isthmus.dev/integration/harness"
)

func TestEgressSelectorThroughProxyServer(t *testing.T) {
	pki := harness.NewPKI(t)
	echo := harness.StartBackend(t, harness.Echo)
	kubelet := startHTTPSBackend(t, pki)
	refused := closedPort(t)
	for _, tc := range []struct {
		name      string
		mode      string
		transport string
		config    func(s *harness.Server) egress.Config
	}{
		{"GRPC over UDS", harness.GRPC, harness.UDS, func(s *harness.Server) egress.Config {
			return egress.Config{Mode: egress.ModeGRPC, Transport: egress.TransportUDS, UDSName: s.UDS}
		}},
		{"HTTPConnect over UDS", harness.HTTPConnect, harness.UDS, func(s *harness.Server) egress.Config {
			return egress.Config{Mode: egress.ModeHTTPConnect, Transport: egress.TransportUDS, UDSName: s.UDS}
		}},
		{"HTTPConnect over TCP with mTLS", harness.HTTPConnect, harness.TCP, func(s *harness.Server) egress.Config {
			return egress.Config{
				Mode: egress.ModeHTTPConnect, Transport: egress.TransportTCP, URL: "https://" + s.Frontend,
				CABundle: s.PKI.CACert, ClientCert: s.PKI.ClientCert, ClientKey: s.PKI.ClientKey,
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			harness.LeakCheck(t)
			s := harness.StartServer(t, bins, pki, harness.ServerOpts{Mode: tc.mode, Transport: tc.transport})
			a := harness.StartAgent(t, bins, s, harness.AgentOpts{})
			a.WaitReady(t)
			s.WaitReady(t)

			rendered, err := egress.Render(tc.config(s))
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "egress-selector-configuration.yaml")
			if err := os.WriteFile(path, rendered, 0o644); err != nil {
				t.Fatal(err)
			}

			// kube-apiserver's start-up, step by step (its EgressSelectorOptions.ApplyTo).
			cfg, err := egressselector.ReadEgressSelectorConfiguration(path)
			if err != nil {
				t.Fatalf("ReadEgressSelectorConfiguration: %v\n%s", err, rendered)
			}
			if errs := egressselector.ValidateEgressSelectorConfiguration(cfg); len(errs) > 0 {
				t.Fatalf("ValidateEgressSelectorConfiguration: %v", errs.ToAggregate())
			}
			sel, err := egressselector.NewEgressSelector(cfg)
			if err != nil {
				t.Fatalf("NewEgressSelector: %v", err)
			}
			kubeDial, err := sel.Lookup(egressselector.Cluster.AsNetworkContext())
			if err != nil || kubeDial == nil {
				t.Fatalf("Lookup(cluster): %v, %v", kubeDial, err)
			}
			for _, name := range []string{"controlplane", "etcd"} {
				if !directSelection(cfg.EgressSelections, name) {
					t.Errorf("%s is not explicitly Direct", name)
				}
			}
			ours, err := egress.NewDialerFromFile(path)
			if err != nil {
				t.Fatal(err)
			}

			for _, d := range []struct {
				name string
				dial utilnet.DialFunc
			}{{"kube-apiserver's dialer", kubeDial}, {"egress.Dialer", ours.DialContext}} {
				t.Run(d.name, func(t *testing.T) {
					okBefore := serverDials(t, s, "result", "ok")
					allBefore := serverDials(t, s)
					egressEcho(t, d.dial, echo.Addr())
					egressHTTPS(t, d.dial, kubelet, pki.CACert)
					egressRefused(t, d.dial, refused)
					// Every dial went through proxy-server, none around it.
					if ok, all := serverDials(t, s, "result", "ok")-okBefore, serverDials(t, s)-allBefore; ok != 2 || all != 3 {
						t.Errorf("proxy-server counted %v successful of %v dials, want 2 of 3", ok, all)
					}
				})
			}
			harness.WaitFor(t, 15*time.Second, "the backend's connections to close", func() bool { return echo.Open() == 0 })
		})
	}
}

func directSelection(sels []apiserver.EgressSelection, name string) bool {
	for _, s := range sels {
		if s.Name == name {
			return s.Connection.ProxyProtocol == apiserver.ProtocolDirect && s.Connection.Transport == nil
		}
	}
	return false
}

func serverDials(t *testing.T, s *harness.Server, labels ...string) float64 {
	t.Helper()
	n, err := harness.MetricSum(s.MetricsURL(), "konnectivity_network_proxy_server_frontend_dials_total", labels...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// egressEcho sends bytes through the tunnel and reads them back; the
// client speaks first, as in every protocol kube-apiserver tunnels.
func egressEcho(t *testing.T, dial utilnet.DialFunc, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	msg := []byte(strings.Repeat("through the egress selector ", 4096))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if string(got) != string(msg) {
		t.Fatal("echo differs from what was sent")
	}
}

// egressHTTPS makes an HTTPS request through the tunnel, as kube-apiserver
// does to a kubelet.
func egressHTTPS(t *testing.T, dial utilnet.DialFunc, srv *httptest.Server, caFile string) {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tr := &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, err := client.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatalf("GET through the tunnel: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "kubelet ok" {
		t.Fatalf("GET through the tunnel: %d %q", resp.StatusCode, body)
	}
}

// egressRefused: a dial to a port where nothing listens fails promptly
// with an error, not a hang.
func egressRefused(t *testing.T, dial utilnet.DialFunc, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	c, err := dial(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s (nothing listens) succeeded", addr)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("refused dial took %v: %v", took, err)
	}
}

// startHTTPSBackend is a kubelet stand-in: HTTPS on loopback with a
// certificate from the test CA.
func startHTTPSBackend(t *testing.T, pki *certs.Bundle) *httptest.Server {
	t.Helper()
	// The bundle's frontend certificate serves 127.0.0.1.
	pair, err := tls.LoadX509KeyPair(pki.FrontendCert, pki.FrontendKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "kubelet ok")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
