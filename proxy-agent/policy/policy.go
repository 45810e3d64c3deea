// Package policy is the agent's destination policy (--allowed-destinations):
// which addresses and ports proxy-agent dials on behalf of the servers, so
// that a compromised control plane cannot use the tunnel as an open proxy
// into the node network.
//
// A destination that the policy refuses is never dialled: an IP address is
// checked before any packet leaves, and a host name is resolved first and
// only its allowed addresses are dialled (the address checked is the
// address dialled).
package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Policy is a list of allowed destinations. The zero Policy allows
// everything.
type Policy struct {
	rules []rule
	text  string
}

// rule allows the addresses of prefix on ports lo to hi.
type rule struct {
	prefix netip.Prefix
	lo, hi uint16
}

// Parse reads a comma-separated list of entries, each one of
//
//	10.0.0.0/8            every port of a CIDR
//	10.0.0.0/8:10250      one port
//	10.0.0.0/8:30000-32767 a port range
//	192.0.2.7, 192.0.2.7:80  one address (a /32; a /128 for IPv6)
//	[fd00::/8]:443, fd00::/8, [fd00::7]:80  IPv6, bracketed when a port follows
//
// An empty string allows everything.
func Parse(s string) (*Policy, error) {
	p := &Policy{text: strings.TrimSpace(s)}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		r, err := parseRule(f)
		if err != nil {
			return nil, fmt.Errorf("allowed destination %q: %w (want CIDR, CIDR:port or CIDR:low-high; IPv6 as [fd00::/8]:443)", f, err)
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

func parseRule(f string) (rule, error) {
	r := rule{lo: 0, hi: 65535}
	host, port := f, ""
	switch {
	case strings.HasPrefix(f, "["):
		end := strings.Index(f, "]")
		if end < 0 {
			return r, errors.New("missing ]")
		}
		host, port = f[1:end], f[end+1:]
		if port != "" {
			var ok bool
			if port, ok = strings.CutPrefix(port, ":"); !ok {
				return r, errors.New("want :port after ]")
			}
		}
	case strings.Count(f, ":") == 1:
		host, port, _ = strings.Cut(f, ":")
	}
	prefix, err := parsePrefix(host)
	if err != nil {
		return r, err
	}
	r.prefix = prefix
	if port != "" {
		lo, hi, isRange := strings.Cut(port, "-")
		if r.lo, err = parsePort(lo); err != nil {
			return r, err
		}
		r.hi = r.lo
		if isRange {
			if r.hi, err = parsePort(hi); err != nil {
				return r, err
			}
			if r.hi < r.lo {
				return r, fmt.Errorf("port range %s: low above high", port)
			}
		}
	}
	return r, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("not a CIDR: %w", err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an IP address or CIDR: %w", err)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want 1-65535", s)
	}
	return uint16(n), nil
}

// AllowsAll reports whether the policy lets every destination through.
func (p *Policy) AllowsAll() bool { return p == nil || len(p.rules) == 0 }

// Allows reports whether the policy allows dest.
func (p *Policy) Allows(dest netip.AddrPort) bool {
	if p.AllowsAll() {
		return true
	}
	a := dest.Addr().Unmap()
	for _, r := range p.rules {
		if r.prefix.Contains(a) && dest.Port() >= r.lo && dest.Port() <= r.hi {
			return true
		}
	}
	return false
}

// String is the policy as given.
func (p *Policy) String() string {
	if p.AllowsAll() {
		return "everything"
	}
	return p.text
}

// ErrNotAllowed is the error of a destination the policy refuses; its
// text says "not allowed by policy", which the ANP wire carries as the
// reason.
var ErrNotAllowed = errors.New("not allowed by policy")

// Dialer dials the destinations a Policy allows.
type Dialer struct {
	Policy *Policy
	// Resolve looks up a host name's addresses (default: net.DefaultResolver).
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// Dial connects to an address the policy allowed (default: a net.Dialer).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// DialContext dials address ("host:port", TCP) if the policy allows it. A
// refused destination's error wraps ErrNotAllowed.
func (d *Dialer) DialContext(ctx context.Context, address string) (net.Conn, error) {
	dial := d.Dial
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	if d.Policy.AllowsAll() {
		return dial(ctx, "tcp", address)
	}
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("destination %q: %w", address, err)
	}
	port, err := parsePort(portText)
	if err != nil {
		return nil, fmt.Errorf("destination %q: %w", address, err)
	}
	addrs, err := d.addresses(ctx, host)
	if err != nil {
		return nil, err
	}
	var allowed []netip.AddrPort
	for _, a := range addrs {
		if ap := netip.AddrPortFrom(a.Unmap(), port); d.Policy.Allows(ap) {
			allowed = append(allowed, ap)
		}
	}
	if len(allowed) == 0 {
		return nil, fmt.Errorf("destination %s is %w (--allowed-destinations=%s)", address, ErrNotAllowed, d.Policy)
	}
	var errs []error
	for _, ap := range allowed {
		c, err := dial(ctx, "tcp", ap.String())
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// addresses are host's addresses: host itself when it is an IP address.
func (d *Dialer) addresses(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	resolve := d.Resolve
	if resolve == nil {
		resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	addrs, err := resolve(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	return addrs, nil
}
