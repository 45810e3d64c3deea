package egress

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/apis/apiserver/install"
	"k8s.io/apiserver/pkg/apis/apiserver/v1beta1"
	"sigs.k8s.io/yaml"

	"isthmus.dev/certs"
)

// fuzzDir stands in a seed for the directory of the fuzz run's
// certificates, which differs from run to run.
const fuzzDir = "$DIR"

// FuzzLoad: the loader `isthmus egress validate` runs on a user's file
// never panics (kube-apiserver's egress selector does, on some
// configurations its validation lets through: Load must refuse those
// first); and what it accepts, written back as v1beta1, loads again to
// the same configuration.
func FuzzLoad(f *testing.F) {
	dir := f.TempDir()
	b, err := certs.NewBundle(filepath.Join(dir, "pki"))
	if err != nil {
		f.Fatal(err)
	}
	for _, c := range []Config{
		{}, {Mode: ModeHTTPConnect}, {ControlPlane: RouteProxy, Etcd: RouteDirect},
		{Mode: ModeHTTPConnect, Transport: TransportTCP, URL: "https://127.0.0.1:8131",
			CABundle: b.CACert, ClientCert: b.ClientCert, ClientKey: b.ClientKey, TLSServerName: "proxy"},
	} {
		y, err := Render(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(bytes.ReplaceAll(y, []byte(dir), []byte(fuzzDir)))
	}
	for _, body := range []string{
		"- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      tcp:\n        url: http://127.0.0.1:8131\n",
		"- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      tcp:\n        url: https://127.0.0.1:8131\n",
		"- name: master\n  connection:\n    proxyProtocol: Direct\n- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: /run/k.sock\n",
		"- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        UDSName: /run/k.sock\n",
	} {
		f.Add([]byte("apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n" + body))
	}
	path := filepath.Join(dir, "egress.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		data = bytes.ReplaceAll(data, []byte(fuzzDir), []byte(dir))
		if !filesStayIn(data, dir) {
			t.Skip("names a file outside the fuzz run's directory")
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := load(path, "egress.yaml")
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("%q: an empty error", data)
			}
			return
		}
		again := writeBack(t, cfg, path)
		if err := os.WriteFile(path, again, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg2, err := load(path, "egress.yaml")
		if err != nil {
			t.Fatalf("%q loads, but written back as\n%s\nit does not: %v", data, again, err)
		}
		if !reflect.DeepEqual(cfg, cfg2) {
			t.Fatalf("%q loads to %+v, written back to %+v", data, cfg, cfg2)
		}
	})
}

// filesStayIn reports whether every TLS file data may name (read
// leniently, so as any key the loader might take) is a regular file in
// dir: the loader reads them, and /dev/zero would never end.
func filesStayIn(data []byte, dir string) bool {
	var c v1beta1.EgressSelectorConfiguration
	if yaml.Unmarshal(data, &c) != nil {
		return !bytes.Contains(data, []byte("/"))
	}
	for _, s := range c.EgressSelections {
		tr := s.Connection.Transport
		if tr == nil || tr.TCP == nil || tr.TCP.TLSConfig == nil {
			continue
		}
		for _, p := range []string{tr.TCP.TLSConfig.CABundle, tr.TCP.TLSConfig.ClientCert, tr.TCP.TLSConfig.ClientKey} {
			if p == "" {
				continue
			}
			if !strings.HasPrefix(filepath.Clean(p), dir+string(filepath.Separator)) {
				return false
			}
			if fi, err := os.Lstat(p); err == nil && !fi.Mode().IsRegular() {
				return false
			}
		}
	}
	return true
}

// writeBack renders cfg as a v1beta1 file, as an operator would save it.
func writeBack(t *testing.T, cfg *apiserver.EgressSelectorConfiguration, path string) []byte {
	t.Helper()
	s := runtime.NewScheme()
	install.Install(s)
	var out v1beta1.EgressSelectorConfiguration
	if err := s.Convert(cfg, &out, nil); err != nil {
		t.Fatalf("%s: convert to v1beta1: %v", path, err)
	}
	out.APIVersion, out.Kind = v1beta1.SchemeGroupVersion.String(), "EgressSelectorConfiguration"
	y, err := yaml.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return y
}
