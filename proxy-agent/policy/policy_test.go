package policy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseAndAllows(t *testing.T) {
	cases := []struct {
		policy string
		allow  []string
		deny   []string
	}{
		{"", []string{"10.0.0.1:1", "[fd00::1]:443"}, nil},
		{"10.0.0.0/8", []string{"10.1.2.3:22", "10.255.0.1:65535"}, []string{"11.0.0.1:22", "[fd00::1]:22"}},
		{"10.0.0.0/8:10250", []string{"10.1.2.3:10250"}, []string{"10.1.2.3:10251", "192.0.2.1:10250"}},
		{"10.0.0.0/8:30000-32767", []string{"10.0.0.1:30000", "10.0.0.1:32767"}, []string{"10.0.0.1:29999", "10.0.0.1:32768"}},
		{"192.0.2.7", []string{"192.0.2.7:80"}, []string{"192.0.2.8:80"}},
		{"192.0.2.7:80", []string{"192.0.2.7:80"}, []string{"192.0.2.7:81"}},
		{"[fd00::/8]:443", []string{"[fd12::1]:443"}, []string{"[fd12::1]:80", "[fe80::1]:443"}},
		{"fd00::/8", []string{"[fd12::1]:1"}, []string{"10.0.0.1:1"}},
		{"[fd00::7]:80", []string{"[fd00::7]:80"}, []string{"[fd00::8]:80"}},
		{" 10.0.0.0/24:443 , 172.16.0.0/12 ", []string{"10.0.0.9:443", "172.20.0.1:1"}, []string{"10.0.0.9:80"}},
		// An IPv4-mapped IPv6 destination is judged as the IPv4 address.
		{"10.0.0.0/8", []string{"[::ffff:10.0.0.1]:80"}, []string{"[::ffff:11.0.0.1]:80"}},
	}
	for _, c := range cases {
		p, err := Parse(c.policy)
		if err != nil {
			t.Fatalf("Parse(%q): %v", c.policy, err)
		}
		for _, a := range c.allow {
			if !p.Allows(netip.MustParseAddrPort(a)) {
				t.Errorf("%q should allow %s", c.policy, a)
			}
		}
		for _, a := range c.deny {
			if p.Allows(netip.MustParseAddrPort(a)) {
				t.Errorf("%q should refuse %s", c.policy, a)
			}
		}
	}
}

func TestParseErrorsNameTheEntry(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "10.0.0.0/8:0", "10.0.0.0/8:70000", "10.0.0.0/8:9-3",
		"example.com", "[fd00::/8", "[fd00::/8]443", "10.0.0.0/8:http", "10.0.0.1:1:2"} {
		_, err := Parse("10.1.0.0/16, " + bad)
		if err == nil {
			t.Errorf("Parse(%q) accepted", bad)
			continue
		}
		if !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "CIDR") {
			t.Errorf("Parse(%q): %v; want the entry named and the accepted forms", bad, err)
		}
	}
}

// listener counts the connections a loopback listener accepts.
func listener(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), &n
}

func TestDialerNeverDialsARefusedDestination(t *testing.T) {
	addr, accepted := listener(t)
	port := netip.MustParseAddrPort(addr).Port()
	other := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port+1)
	p, err := Parse(other.String()) // allows another port only
	if err != nil {
		t.Fatal(err)
	}
	d := &Dialer{Policy: p}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = d.DialContext(ctx, addr)
	if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), "not allowed by policy") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("dial %s: %v; want ErrNotAllowed naming the destination", addr, err)
	}
	// The allowed destination is dialled, and only it reached the listener.
	p2, _ := Parse("127.0.0.0/8:" + strconvPort(port))
	c, err := (&Dialer{Policy: p2}).DialContext(ctx, addr)
	if err != nil {
		t.Fatalf("allowed dial: %v", err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for accepted.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("listener accepted %d connections; want exactly the allowed one", n)
	}
}

func TestDialerDialsOnlyAllowedAddressesOfAName(t *testing.T) {
	addr, _ := listener(t)
	port := netip.MustParseAddrPort(addr).Port()
	p, _ := Parse("127.0.0.0/8")
	var dialled []string
	d := &Dialer{
		Policy: p,
		Resolve: func(_ context.Context, host string) ([]netip.Addr, error) {
			if host != "backend.test" {
				t.Fatalf("resolved %q", host)
			}
			return []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("127.0.0.1")}, nil
		},
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			dialled = append(dialled, address)
			var nd net.Dialer
			return nd.DialContext(ctx, network, address)
		},
	}
	c, err := d.DialContext(context.Background(), "backend.test:"+strconvPort(port))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(dialled) != 1 || dialled[0] != addr {
		t.Fatalf("dialled %v; want only %s (192.0.2.1 is not allowed)", dialled, addr)
	}
	d.Resolve = func(context.Context, string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil
	}
	dialled = nil
	if _, err := d.DialContext(context.Background(), "backend.test:80"); !errors.Is(err, ErrNotAllowed) || len(dialled) != 0 {
		t.Fatalf("%v, dialled %v; want refused without a dial", err, dialled)
	}
}

func TestZeroPolicyAllowsEverything(t *testing.T) {
	var p *Policy
	if !p.AllowsAll() || !p.Allows(netip.MustParseAddrPort("203.0.113.1:1")) || p.String() != "everything" {
		t.Fatal("a nil policy must allow everything")
	}
}

func strconvPort(p uint16) string { return strconv.Itoa(int(p)) }
