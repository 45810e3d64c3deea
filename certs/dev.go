package certs

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// Bundle is a ready set of files for one proxy-server and its clients: what
// `isthmus demo` and the tests use. Paths are absolute.
type Bundle struct {
	Dir                         string
	CACert, CAKey               string
	AgentPortCert, AgentPortKey string // proxy-server --cluster-cert/--cluster-key
	FrontendCert, FrontendKey   string // proxy-server --server-cert/--server-key (TCP mode)
	ClientCert, ClientKey       string // kube-apiserver's client certificate (TCP mode)
	AgentCert, AgentKey         string // proxy-agent --agent-cert/--agent-key
}

// NewBundle creates a CA and every certificate of a single-machine setup in
// dir: servers valid for localhost, 127.0.0.1, ::1 and the extra hosts.
func NewBundle(dir string, extraHosts ...string) (*Bundle, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bundle dir: %w", err)
	}
	ca, err := NewCAFor(CARequest{})
	if err != nil {
		return nil, err
	}
	b := &Bundle{Dir: dir, CACert: filepath.Join(dir, "ca.crt"), CAKey: filepath.Join(dir, "ca.key")}
	if err := WriteFiles(ca.Files(b.CACert, b.CAKey), true); err != nil {
		return nil, err
	}
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, h := range extraHosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	issue := func(name string, r Request, cert, key *string) error {
		p, err := ca.Issue(r)
		if err != nil {
			return err
		}
		*cert, *key, err = p.WritePair(dir, name)
		return err
	}
	if err := issue("agent-port", Request{CommonName: AgentPortCN, DNSNames: dns, IPs: ips, Server: true}, &b.AgentPortCert, &b.AgentPortKey); err != nil {
		return nil, err
	}
	if err := issue("frontend", Request{CommonName: FrontendCN, DNSNames: dns, IPs: ips, Server: true}, &b.FrontendCert, &b.FrontendKey); err != nil {
		return nil, err
	}
	if err := issue("apiserver-client", ClientRequest(APIServerClientCN), &b.ClientCert, &b.ClientKey); err != nil {
		return nil, err
	}
	if err := issue("agent", ClientRequest(AgentCN), &b.AgentCert, &b.AgentKey); err != nil {
		return nil, err
	}
	return b, nil
}
