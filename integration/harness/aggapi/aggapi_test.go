package aggapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"isthmus.dev/certs"
	"isthmus.dev/integration/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pki is the stand's certificates: the server's, and client certificates
// from the request-header CA and from another one.
type pki struct {
	serverCA                  *x509.CertPool
	certFile, keyFile, caFile string
	front, stranger           tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	serving, err := certs.NewCA("serving-ca", 0)
	must(err)
	front, err := certs.NewCA("front-proxy-ca", 0)
	must(err)
	other, err := certs.NewCA("other-ca", 0)
	must(err)
	req, err := certs.ServerRequest("stand-apiserver", certs.LoopbackHosts)
	must(err)
	srv, err := serving.Issue(req)
	must(err)
	p := &pki{serverCA: x509.NewCertPool()}
	p.serverCA.AddCert(serving.Cert)
	p.certFile, p.keyFile, err = srv.WritePair(dir, "serving")
	must(err)
	p.caFile, _, err = (&certs.Pair{CertPEM: front.CertPEM, KeyPEM: front.KeyPEM}).WritePair(dir, "front-proxy-ca")
	must(err)
	client := func(ca *certs.CA) tls.Certificate {
		pair, err := ca.Issue(certs.ClientRequest("front-proxy-client"))
		must(err)
		c, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
		must(err)
		return c
	}
	p.front, p.stranger = client(front), client(other)
	return p
}

func (p *pki) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: p.serverCA}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
}

// get GETs url as user (if not empty), accepting accept (if any), and
// decodes a JSON answer into v (if not nil); it returns the status.
func get(t *testing.T, c *http.Client, url, user string, v any, accept ...string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range accept {
		req.Header.Add("Accept", a)
	}
	if user != "" {
		req.Header.Set("X-Remote-User", user)
		req.Header.Set("X-Remote-Group", "system:authenticated")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v in %s", url, err, body)
		}
	}
	return resp.StatusCode
}

func TestServer(t *testing.T) {
	harness.LeakCheck(t)
	p := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, Options{Listener: ln, CertFile: p.certFile, KeyFile: p.keyFile,
		RequestHeaderCAFile: p.caFile, AllowedNames: []string{"front-proxy-client"}})
	if err != nil {
		t.Fatal(err)
	}
	base := "https://" + ln.Addr().String()
	front := p.client(&p.front)
	defer front.CloseIdleConnections()

	// The server is up once /readyz says so.
	for deadline := time.Now().Add(10 * time.Second); get(t, front, base+"/readyz", "alice", nil) != http.StatusOK; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not ready in 10 s")
		}
	}
	if code := get(t, front, base+"/healthz", "alice", nil); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}

	t.Run("get", func(t *testing.T) {
		var ping Ping
		if code := get(t, front, base+"/apis/stand.isthmus.dev/v1/pings/hello", "alice", &ping); code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
		if ping.Kind != "Ping" || ping.APIVersion != "stand.isthmus.dev/v1" || ping.Name != "hello" || ping.User != "alice" || ping.Served < 1 {
			t.Errorf("got %+v", ping)
		}
	})
	t.Run("list", func(t *testing.T) {
		var list PingList
		if code := get(t, front, base+"/apis/stand.isthmus.dev/v1/pings", "alice", &list); code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
		if list.Kind != "PingList" || len(list.Items) != 2 || list.Items[0].User != "alice" {
			t.Errorf("got %+v", list)
		}
	})
	t.Run("discovery", func(t *testing.T) {
		var resources struct {
			Resources []struct {
				Name  string
				Kind  string
				Verbs []string
			}
		}
		if code := get(t, front, base+"/apis/stand.isthmus.dev/v1", "alice", &resources); code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
		if len(resources.Resources) != 1 || resources.Resources[0].Name != Resource || resources.Resources[0].Kind != "Ping" ||
			strings.Join(resources.Resources[0].Verbs, ",") != "get,list" {
			t.Errorf("got %+v", resources)
		}
		// The aggregated discovery kube-apiserver's discovery aggregator asks for.
		var aggregated struct {
			Kind  string
			Items []struct {
				Metadata struct{ Name string }
				Versions []struct {
					Version   string
					Resources []struct{ Resource string }
				}
			}
		}
		if code := get(t, front, base+"/apis", "alice", &aggregated, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"); code != http.StatusOK {
			t.Fatalf("aggregated discovery: status %d", code)
		}
		if aggregated.Kind != "APIGroupDiscoveryList" || len(aggregated.Items) != 1 || aggregated.Items[0].Metadata.Name != Group ||
			len(aggregated.Items[0].Versions) != 1 || len(aggregated.Items[0].Versions[0].Resources) != 1 ||
			aggregated.Items[0].Versions[0].Resources[0].Resource != Resource {
			t.Errorf("aggregated discovery: got %+v", aggregated)
		}
		// The table kubectl get asks for: a GET of a ping all the same, and
		// counted as one.
		var table struct {
			Kind string
			Rows []struct{ Cells []any }
		}
		if code := get(t, front, base+"/apis/stand.isthmus.dev/v1/pings/hello", "alice", &table, "application/json;as=Table;v=v1;g=meta.k8s.io"); code != http.StatusOK {
			t.Fatalf("table: status %d", code)
		}
		if table.Kind != "Table" || len(table.Rows) != 1 || len(table.Rows[0].Cells) == 0 || table.Rows[0].Cells[0] != "hello" {
			t.Errorf("table: got %+v", table)
		}
		for _, path := range []string{"/apis", "/apis/stand.isthmus.dev", "/openapi/v2", "/openapi/v3", "/openapi/v3/apis/stand.isthmus.dev/v1"} {
			if code := get(t, front, base+path, "alice", nil); code != http.StatusOK {
				t.Errorf("%s: %d", path, code)
			}
		}
	})
	if n := s.Served(); n != 3 {
		t.Errorf("Served() = %d, want 3", n)
	}

	t.Run("refused", func(t *testing.T) {
		anonymous := p.client(nil)
		defer anonymous.CloseIdleConnections()
		if code := get(t, anonymous, base+"/apis/stand.isthmus.dev/v1/pings/hello", "alice", nil); code != http.StatusUnauthorized {
			t.Errorf("no client certificate: %d, want 401", code)
		}
		stranger := p.client(&p.stranger)
		defer stranger.CloseIdleConnections()
		if code := get(t, stranger, base+"/apis/stand.isthmus.dev/v1/pings/hello", "alice", nil); code != http.StatusUnauthorized {
			t.Errorf("client certificate of another CA: %d, want 401", code)
		}
		if code := get(t, front, base+"/apis/stand.isthmus.dev/v1/pings/hello", "", nil); code != http.StatusUnauthorized {
			t.Errorf("no user header: %d, want 401", code)
		}
		if n := s.Served(); n != 3 {
			t.Errorf("Served() = %d after refusals, want 3", n)
		}
	})

	stopping := time.Now()
	cancel()
	select {
	case <-s.Done():
		t.Logf("stopped in %v", time.Since(stopping))
	case <-time.After(30 * time.Second):
		t.Fatal("not stopped 30 s after ctx ended")
	}
	if err := s.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener not closed: Accept: %v", err)
	}
}

func TestStartFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Start(context.Background(), Options{Listener: ln, CertFile: "/nonexistent.crt", KeyFile: "/nonexistent.key"}); err == nil {
		t.Fatal("Start without certificates did not fail")
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener not closed after a failed Start: Accept: %v", err)
	}
}

// TestListenerFails: a listener that fails under the server (its network
// namespace gone) must not crash the process; the server stops with ctx.
func TestListenerFails(t *testing.T) {
	harness.LeakCheck(t)
	p := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, Options{Listener: ln, CertFile: p.certFile, KeyFile: p.keyFile, RequestHeaderCAFile: p.caFile})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // serving
	_ = ln.Close()
	time.Sleep(100 * time.Millisecond) // Accept has failed
	cancel()
	select {
	case <-s.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("not stopped 30 s after ctx ended")
	}
}
