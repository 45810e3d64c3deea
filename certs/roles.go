package certs

import (
	"fmt"
	"net"
	"strings"
)

// The common names isthmus gives each party by default. kube-apiserver's
// client certificate and the agents' are only checked against the CA by
// proxy-server; the kubeconfig user is what kube-apiserver's RBAC sees.
const (
	AgentPortCN       = "proxy-server"
	FrontendCN        = "proxy-server-frontend"
	APIServerClientCN = "system:kube-apiserver"
	AgentCN           = "system:konnectivity-agent"
	KubeconfigUser    = "system:konnectivity-server"
)

// SplitHosts sorts host names and IP addresses into the two kinds of
// subject alternative names, dropping duplicates. Brackets around IPv6
// addresses are allowed. A name that is neither an IP address nor a valid
// DNS name (RFC 1123; a leading "*." wildcard allowed) is an error.
func SplitHosts(hosts []string) (dns []string, ips []net.IP, err error) {
	seen := map[string]bool{}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if !validDNSName(h) {
			return nil, nil, fmt.Errorf("host %q is neither an IP address nor a DNS name (no ports or URLs here)", h)
		}
		if !seen[h] {
			seen[h] = true
			dns = append(dns, h)
		}
	}
	return dns, ips, nil
}

func validDNSName(h string) bool {
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	labels := strings.Split(h, ".")
	for i, l := range labels {
		if i == 0 && l == "*" && len(labels) > 2 {
			continue
		}
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// ServerRequest is a server-auth certificate for the given hosts (DNS names
// and IP addresses, as SplitHosts reads them); at least one is needed.
func ServerRequest(cn string, hosts []string) (Request, error) {
	dns, ips, err := SplitHosts(hosts)
	if err != nil {
		return Request{}, err
	}
	if len(dns) == 0 && len(ips) == 0 {
		return Request{}, fmt.Errorf("server certificate %q: no host names or addresses given", cn)
	}
	return Request{CommonName: cn, DNSNames: dns, IPs: ips, Server: true}, nil
}

// ClientRequest is a client-auth certificate for cn (and its groups, as
// Kubernetes reads the organization).
func ClientRequest(cn string, groups ...string) Request {
	return Request{CommonName: cn, Organization: groups, Client: true}
}

// LoopbackHosts are the names of this machine: for a frontend that
// kube-apiserver reaches on the same host.
var LoopbackHosts = []string{"localhost", "127.0.0.1", "::1"}
