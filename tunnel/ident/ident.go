// Package ident parses agent identifiers: the URL-query string an agent sends
// in the agentIdentifiers metadata (host=node1&ipv4=10.0.0.5&ipv6=fd00::5&
// cidr=10.0.0.0/24&default-route=true), which routing strategies match on.
package ident

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Identifiers of one agent.
type Identifiers struct {
	Hosts        []string
	IPv4         []netip.Addr
	IPv6         []netip.Addr
	CIDRs        []netip.Prefix
	DefaultRoute bool
}

// Parse reads an agentIdentifiers string. Unknown keys are ignored, as
// upstream does, so newer agents keep working; malformed values are errors.
func Parse(s string) (Identifiers, error) {
	var id Identifiers
	q, err := url.ParseQuery(s)
	if err != nil {
		return id, fmt.Errorf("agent identifiers %q: not URL query form: %w", s, err)
	}
	for key, vals := range q {
		for _, v := range vals {
			switch key {
			case "host":
				id.Hosts = append(id.Hosts, canonicalHost(v))
			case "ipv4", "ipv6":
				a, err := netip.ParseAddr(v)
				if err != nil || (key == "ipv4") != a.Is4() {
					return id, fmt.Errorf("agent identifiers: %s=%q is not an %s address", key, v, strings.ToUpper(key[:2])+key[2:])
				}
				// An IPv4-mapped IPv6 address is the IPv4 address a dial
				// to it reaches (MatchesHost unmaps what it is given).
				if a = a.Unmap(); a.Is4() {
					id.IPv4 = append(id.IPv4, a)
				} else {
					id.IPv6 = append(id.IPv6, a)
				}
			case "cidr":
				p, err := netip.ParsePrefix(v)
				if err != nil {
					return id, fmt.Errorf("agent identifiers: cidr=%q: %w", v, err)
				}
				id.CIDRs = append(id.CIDRs, unmapPrefix(p.Masked()))
			case "default-route":
				b, err := strconv.ParseBool(v)
				if err != nil {
					return id, fmt.Errorf("agent identifiers: default-route=%q: want true or false", v)
				}
				id.DefaultRoute = id.DefaultRoute || b
			}
		}
	}
	return id, nil
}

// canonicalHost is a host= value as MatchesHost compares it: an address
// (brackets or not) in its canonical form, unmapped; a name in lower case.
func canonicalHost(v string) string {
	if a, err := netip.ParseAddr(strings.Trim(v, "[]")); err == nil {
		return a.Unmap().String()
	}
	return strings.ToLower(v)
}

// unmapPrefix turns a prefix of IPv4-mapped IPv6 addresses into the IPv4
// prefix, which InCIDR compares unmapped addresses with.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// MatchesHost reports whether host (a name or an IP literal, no port) is
// one of the agent's hosts or addresses.
func (id Identifiers) MatchesHost(host string) bool {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		a = a.Unmap()
		for _, x := range append(id.IPv4[:len(id.IPv4):len(id.IPv4)], id.IPv6...) {
			if x == a {
				return true
			}
		}
		host = a.String() // an address may also be listed as host=
	}
	host = strings.ToLower(host)
	for _, h := range id.Hosts {
		if h == host {
			return true
		}
	}
	return false
}

// InCIDR reports whether host is an IP inside one of the agent's CIDRs.
func (id Identifiers) InCIDR(host string) bool {
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range id.CIDRs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// String renders the identifiers in the wire form.
func (id Identifiers) String() string {
	q := url.Values{}
	for _, h := range id.Hosts {
		q.Add("host", h)
	}
	for _, a := range id.IPv4 {
		q.Add("ipv4", a.String())
	}
	for _, a := range id.IPv6 {
		q.Add("ipv6", a.String())
	}
	for _, p := range id.CIDRs {
		q.Add("cidr", p.String())
	}
	if id.DefaultRoute {
		q.Add("default-route", "true")
	}
	return q.Encode()
}
