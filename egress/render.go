package egress

import (
	"fmt"
	"os"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/apis/apiserver/v1beta1"
	"sigs.k8s.io/yaml"
)

// Render returns the EgressSelectorConfiguration of c as YAML, after
// loading it back exactly as kube-apiserver would (Load): what Render
// returns, kube-apiserver accepts and can dial with.
func Render(c Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c = c.withDefaults()
	proxy := v1beta1.Connection{ProxyProtocol: v1beta1.ProtocolGRPC, Transport: &v1beta1.Transport{}}
	if c.Mode == ModeHTTPConnect {
		proxy.ProxyProtocol = v1beta1.ProtocolHTTPConnect
	}
	if c.Transport == TransportUDS {
		proxy.Transport.UDS = &v1beta1.UDSTransport{UDSName: c.UDSName}
	} else {
		proxy.Transport.TCP = &v1beta1.TCPTransport{URL: c.URL, TLSConfig: &v1beta1.TLSConfig{
			CABundle: c.CABundle, ClientCert: c.ClientCert, ClientKey: c.ClientKey, TLSServerName: c.TLSServerName,
		}}
	}
	out := v1beta1.EgressSelectorConfiguration{
		TypeMeta:         metav1.TypeMeta{APIVersion: v1beta1.SchemeGroupVersion.String(), Kind: "EgressSelectorConfiguration"},
		EgressSelections: []v1beta1.EgressSelection{{Name: "cluster", Connection: proxy}},
	}
	for _, s := range []struct {
		name  string
		route Route
	}{{"controlplane", c.ControlPlane}, {"etcd", c.Etcd}} {
		switch s.route {
		case RouteDirect:
			out.EgressSelections = append(out.EgressSelections, v1beta1.EgressSelection{Name: s.name, Connection: v1beta1.Connection{ProxyProtocol: v1beta1.ProtocolDirect}})
		case RouteProxy:
			out.EgressSelections = append(out.EgressSelections, v1beta1.EgressSelection{Name: s.name, Connection: proxy})
		}
	}
	body, err := yaml.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("render egress configuration: %w", err)
	}
	b := append([]byte("# kube-apiserver --egress-selector-config-file; written by `isthmus egress render`.\n"), body...)
	if _, err := LoadBytes(b); err != nil {
		return nil, err
	}
	return b, nil
}

// LoadBytes is Load for a configuration in memory (kube-apiserver's loader
// reads files, so b goes through a temporary file).
func LoadBytes(b []byte) (*apiserver.EgressSelectorConfiguration, error) {
	f, err := os.CreateTemp("", "egress-selector-*.yaml")
	if err != nil {
		return nil, fmt.Errorf("load egress configuration: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("load egress configuration: %w", err)
	}
	return load(f.Name(), "egress configuration")
}

// APIServerFlags are the flags kube-apiserver needs: the configuration
// file (as kube-apiserver will find it) and --api-audiences with every
// audience it must accept. The audiences kube-apiserver accepts today (its
// --api-audiences, or its --service-account-issuer when that is unset)
// must be among them, or its own service-account tokens stop working.
func APIServerFlags(configFile string, audiences []string) []string {
	flags := []string{"--egress-selector-config-file=" + configFile}
	var seen []string
	for _, a := range audiences {
		a = strings.TrimSpace(a)
		if a != "" && !slices.Contains(seen, a) {
			seen = append(seen, a)
		}
	}
	if len(seen) > 0 {
		flags = append(flags, "--api-audiences="+strings.Join(seen, ","))
	}
	return flags
}
