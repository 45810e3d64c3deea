package ident

import "testing"

func TestParse(t *testing.T) {
	id, err := Parse("host=Node1&host=node1.example&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.244.1.7/24&default-route=true&future=x")
	if err != nil {
		t.Fatal(err)
	}
	if len(id.Hosts) != 2 || len(id.IPv4) != 1 || len(id.IPv6) != 1 || len(id.CIDRs) != 1 || !id.DefaultRoute {
		t.Fatalf("parsed %+v", id)
	}
	if id.CIDRs[0].String() != "10.244.1.0/24" {
		t.Errorf("cidr not masked: %s", id.CIDRs[0])
	}
	for host, want := range map[string]bool{"node1": true, "NODE1.example": true, "10.0.0.5": true, "[fd00::5]": true, "10.0.0.6": false, "node2": false} {
		if got := id.MatchesHost(host); got != want {
			t.Errorf("MatchesHost(%q) = %v, want %v", host, got, want)
		}
	}
	for host, want := range map[string]bool{"10.244.1.200": true, "10.244.2.1": false, "node1": false} {
		if got := id.InCIDR(host); got != want {
			t.Errorf("InCIDR(%q) = %v, want %v", host, got, want)
		}
	}
	back, err := Parse(id.String())
	if err != nil || back.String() != id.String() {
		t.Errorf("round trip: %q -> %q (%v)", id.String(), back.String(), err)
	}
}

func TestAddressListedAsHost(t *testing.T) {
	id, err := Parse("host=10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if !id.MatchesHost("10.1.2.3") {
		t.Error("an address given as host= must match, as upstream matches it")
	}
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{"ipv4=fd00::1", "ipv6=10.0.0.1", "ipv4=nope", "cidr=10.0.0.0/33", "default-route=maybe", "%zz"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
	if id, err := Parse(""); err != nil || id.DefaultRoute || len(id.Hosts) != 0 {
		t.Errorf("empty identifiers: %+v, %v", id, err)
	}
}

// Addresses are kept in the form dials are compared in: a dial to an
// IPv4-mapped address reaches the IPv4 address, and a host= address may
// come in brackets or in any spelling.
func TestParseNormalizesAddresses(t *testing.T) {
	id, err := Parse("ipv6=::ffff:10.0.0.5&cidr=::ffff:10.1.0.0/112&host=%5BFD00::0005%5D&host=::FFFF:10.2.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if len(id.IPv4) != 1 || id.IPv4[0].String() != "10.0.0.5" || len(id.IPv6) != 0 {
		t.Errorf("ipv6=::ffff:10.0.0.5: %v %v", id.IPv4, id.IPv6)
	}
	if len(id.CIDRs) != 1 || id.CIDRs[0].String() != "10.1.0.0/16" {
		t.Errorf("cidr=::ffff:10.1.0.0/112: %v", id.CIDRs)
	}
	for host, want := range map[string]bool{"10.0.0.5": true, "::ffff:10.0.0.5": true, "fd00::5": true, "[fd00::5]": true, "10.2.0.1": true, "fd00::6": false} {
		if got := id.MatchesHost(host); got != want {
			t.Errorf("MatchesHost(%q) = %v, want %v", host, got, want)
		}
	}
	if !id.InCIDR("10.1.2.3") || !id.InCIDR("::ffff:10.1.2.3") || id.InCIDR("10.2.0.1") {
		t.Errorf("InCIDR with %v", id.CIDRs)
	}
}
