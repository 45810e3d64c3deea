package ident

import (
	"reflect"
	"testing"
)

// FuzzParse: agent identifiers (what an agent sends in its metadata) never
// make Parse panic; what Parse accepts renders (String) to identifiers
// that parse to the same; and every address, host and CIDR accepted is
// matched by a dial to it, in the form the dial gives it (an address
// without brackets, as net.SplitHostPort returns it, or with them).
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "host=node1&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.244.1.0/24&default-route=true",
		"host=Node1&host=node1.example&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.244.1.7/24&default-route=true&future=x",
		"host=10.1.2.3", "host=%5B::1%5D", "ipv6=::ffff:10.0.0.5", "ipv6=fe80::1%25eth0", "cidr=::ffff:10.0.0.0/120",
		"ipv4=fd00::1", "ipv6=10.0.0.1", "cidr=10.0.0.0/33", "default-route=maybe", "%zz", "a;b", "host=&&&host",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		back, err := Parse(id.String())
		if err != nil {
			t.Fatalf("%q parses to %+v, whose String %q does not parse: %v", s, id, id.String(), err)
		}
		if !reflect.DeepEqual(id, back) {
			t.Fatalf("%q parses to %+v, its String %q to %+v", s, id, id.String(), back)
		}
		for _, h := range id.Hosts {
			if !id.MatchesHost(h) {
				t.Errorf("%q: host %q does not match itself", s, h)
			}
		}
		for _, a := range append(id.IPv4[:len(id.IPv4):len(id.IPv4)], id.IPv6...) {
			if !id.MatchesHost(a.String()) || a.Is6() && !id.MatchesHost("["+a.String()+"]") {
				t.Errorf("%q: address %s does not match a dial to it", s, a)
			}
		}
		for _, p := range id.CIDRs {
			if !id.InCIDR(p.Addr().String()) {
				t.Errorf("%q: cidr %s does not contain its own address", s, p)
			}
			if p.Addr().Is6() && !id.InCIDR("["+p.Addr().String()+"]") {
				t.Errorf("%q: cidr %s does not contain its own address in brackets", s, p)
			}
		}
	})
}
