package harness

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Target is a network namespace made by a test, joined to the host by a
// veth pair and open to connections from the host, whose firewall counts
// every TCP packet that reaches each watched port: a test can prove that
// nobody tried to connect to a port, not even with one SYN. Nothing leaves
// the machine (203.0.113.0/24, as Blackhole).
type Target struct {
	Name   string
	NSAddr netip.Addr // the namespace's address, reachable from the host
	ports  []int
}

// NewTarget creates the namespace with a packet counter for each port; all
// is removed at cleanup. It skips t when not root or ip/nft is missing.
func NewTarget(t testing.TB, ports ...int) *Target {
	t.Helper()
	var rules strings.Builder
	rules.WriteString("table inet isthmus_target {\n")
	for _, p := range ports {
		fmt.Fprintf(&rules, "  counter port_%d { }\n", p)
	}
	rules.WriteString("  chain input {\n    type filter hook input priority 0; policy accept;\n")
	for _, p := range ports {
		fmt.Fprintf(&rules, "    tcp dport %d counter name \"port_%d\"\n", p, p)
	}
	rules.WriteString("  }\n}\n")
	b := newVethNamespace(t, rules.String())
	return &Target{Name: b.Name, NSAddr: b.NSAddr, ports: ports}
}

// Addr is NSAddr:port.
func (x *Target) Addr(port int) string {
	return net.JoinHostPort(x.NSAddr.String(), strconv.Itoa(port))
}

// Listen opens a TCP listener on Addr(port) inside the namespace.
func (x *Target) Listen(port int) (net.Listener, error) {
	return listenIn(x.Name, "tcp", x.Addr(port))
}

var counterPackets = regexp.MustCompile(`packets (\d+) bytes`)

// Packets is how many TCP packets have reached port (a watched one) in the
// namespace so far.
func (x *Target) Packets(t testing.TB, port int) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", x.Name, "nft", "list", "counter", "inet", "isthmus_target",
		"port_"+strconv.Itoa(port)).CombinedOutput()
	if err != nil {
		t.Fatalf("read the packet counter of port %d in %s: %v\n%s", port, x.Name, err, out)
	}
	m := counterPackets.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no packet count in nft's answer for port %d: %s", port, out)
	}
	n, err := strconv.Atoi(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
