package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FaultNet is a network namespace made by a test for network faults: a
// daemon started in it (Worker().Command) reaches the host at HostAddr
// over a veth pair (or, for delay and loss where the kernel has no netem,
// over a pair of TUN devices joined by a delay line: see NewImpairedNet).
// Nothing is filtered until the test asks: Blackhole drops every packet
// both ways, SetLink takes the namespace's end down, AddHostAddr and
// RemoveHostAddr give the host addresses that come and go. As with
// NewBlackhole, every address is in 203.0.113.0/24 (TEST-NET-3) and routes
// to the pair, so nothing leaves the machine.
type FaultNet struct {
	Name     string     // the namespace (ip netns)
	HostIf   string     // host end of the pair
	NSIf     string     // the namespace's end of the pair
	HostAddr netip.Addr // host end: where daemons in the namespace reach the host
	NSAddr   netip.Addr // the namespace's own address
	// Impairment says how delay and loss are made on this pair ("" when
	// there are none).
	Impairment string
	// Line is the delay line of a TUN pair (nil on a veth pair).
	Line *DelayLine

	t       testing.TB
	mu      sync.Mutex
	blocked bool
}

// faultNetRules: the namespace accepts everything; faults are added later.
const faultNetRules = "table inet isthmus_faultnet {\n}\n"

// NewFaultNet creates the namespace and its veth pair; all of it is
// removed at cleanup. It skips t when not root or ip/nft is missing.
func NewFaultNet(t testing.TB) *FaultNet {
	t.Helper()
	sweepStaleBlackholeTables(t)
	b := newVethNamespace(t, faultNetRules)
	return &FaultNet{Name: b.Name, HostIf: b.HostIf, NSIf: nsIfOf(b.Name), HostAddr: b.HostAddr, NSAddr: b.NSAddr, t: t}
}

// nsIfOf is the name newVethNamespace gives the namespace's end of the
// pair of namespace ns (isthmus-t<pid>-<seq> has ist<pid>n<seq>).
func nsIfOf(ns string) string {
	rest, _ := strings.CutPrefix(ns, nsPrefix)
	pid, seq, _ := strings.Cut(rest, "-")
	return ifPrefix + pid + "n" + seq
}

// Worker is the namespace as a Worker, to start daemons in it
// (AgentOpts.Worker, Worker.Command).
func (n *FaultNet) Worker() *Worker {
	return &Worker{Name: n.Name, HostIf: n.HostIf, HostAddr: n.HostAddr, NodeAddr: n.NSAddr}
}

// Blackhole starts (on) or ends (off) dropping every packet of the pair,
// both ways: each end's netdev ingress hook drops what arrives, in the
// namespace and on the host. Ingress on both ends, not egress: a packet
// dropped on its way out is a local error its sender's TCP sees (it then
// gives up within seconds, as no black hole would make it); dropped on
// the way in, it is lost as in the network, and the sender retransmits.
// The host's table is bound to the pair's host end only, and removed
// when the black hole ends, at cleanup, or by a later run's sweep.
func (n *FaultNet) Blackhole(t testing.TB, on bool) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if on == n.blocked {
		return
	}
	hostTable := blackholeTable(n.HostIf)
	if !on {
		bhRun(t, "ip", "netns", "exec", n.Name, "nft", "delete", "table", "netdev", nsBlackholeTable)
		bhRun(t, "nft", "delete", "table", "netdev", hostTable)
		n.blocked = false
		return
	}
	t.Cleanup(func() { n.Blackhole(t, false) })
	n.blocked = true
	nftIn(t, n.Name, nsBlackholeTable, n.NSIf)
	nftIn(t, "", hostTable, n.HostIf)
}

// nsBlackholeTable is the namespace's table of a black hole.
const nsBlackholeTable = "isthmus_blackhole"

// blackholeTable is the host's table of a black hole on hostIf.
func blackholeTable(hostIf string) string { return "isthmus_bh_" + hostIf }

// nftIn loads, in namespace ns ("" for the host), a netdev table that
// drops every packet arriving on dev.
func nftIn(t testing.TB, ns, table, dev string) {
	t.Helper()
	rules := fmt.Sprintf("table netdev %s {\n  chain in { type filter hook ingress device %q priority 0; policy drop; }\n}\n", table, dev)
	args := []string{"-f", "-"}
	cmd := exec.Command("nft", args...)
	if ns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	}
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("black hole: nft netdev ingress table %s on %s: %v\n%s", table, dev, err, out)
	}
}

// sweepStaleBlackholeTables removes the host's black-hole tables of test
// processes that no longer run.
func sweepStaleBlackholeTables(t testing.TB) {
	t.Helper()
	out, err := exec.Command("nft", "list", "tables", "netdev").CombinedOutput()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		table, ok := strings.CutPrefix(strings.TrimSpace(line), "table netdev ")
		if !ok {
			continue
		}
		dev, ok := strings.CutPrefix(table, blackholeTable(""))
		if !ok {
			continue
		}
		pid, _, ok := strings.Cut(strings.TrimPrefix(dev, ifPrefix), "h")
		if _, err := os.Stat("/proc/" + pid); !ok || pid == "" || err == nil {
			continue
		}
		t.Logf("removing black-hole table %s left by test process %s", table, pid)
		_ = exec.Command("nft", "delete", "table", "netdev", table).Run()
	}
}

// SetLink sets the namespace's end of the pair down or up. The
// namespace's end, not the host's: a host end taken down loses its route,
// and the host would then send packets for NSAddr to its default route.
func (n *FaultNet) SetLink(t testing.TB, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	bhRun(t, "ip", "-n", n.Name, "link", "set", n.NSIf, state)
}

// AddHostAddr gives the host end a further address (a /32 of a /30 of
// 203.0.113.0/24 no interface uses). The namespace gets no route to it
// until RouteHostAddr: until then a dial to it fails at once (network
// unreachable), as to an address that does not exist yet.
func (n *FaultNet) AddHostAddr(t testing.TB) netip.Addr {
	t.Helper()
	a, _ := addSlash30(t, func(host, _ netip.Addr) {
		bhRun(t, "ip", "addr", "add", netip.PrefixFrom(host, 32).String(), "dev", n.HostIf)
	})
	return a
}

// RouteHostAddr routes a (from AddHostAddr) from the namespace to the pair.
func (n *FaultNet) RouteHostAddr(t testing.TB, a netip.Addr) {
	t.Helper()
	bhRun(t, "ip", "-n", n.Name, "route", "add", netip.PrefixFrom(a, 32).String(), "dev", n.NSIf)
}

// RemoveHostAddr takes a (from AddHostAddr) away: from the host end, and
// the namespace's route to it. Connections to it are left without a path,
// silently: the host sends nothing from an address it no longer has, and
// the namespace has no route to it (no packet leaves for a default route).
// Its /30 stays held until the test ends: a test running beside this one
// that got the address for its own namespace would give the host the
// address back, and the host's old sockets a path to this namespace again.
func (n *FaultNet) RemoveHostAddr(t testing.TB, a netip.Addr) {
	t.Helper()
	bhRun(t, "ip", "-n", n.Name, "route", "del", netip.PrefixFrom(a, 32).String(), "dev", n.NSIf)
	unlock := slash30Lock(t)
	defer unlock()
	holdSlash30(t, netip.PrefixFrom(a, 30).Masked())
	bhRun(t, "ip", "addr", "del", netip.PrefixFrom(a, 32).String(), "dev", n.HostIf)
}

// Listen opens a listener inside the namespace.
func (n *FaultNet) Listen(network, addr string) (net.Listener, error) {
	return listenIn(n.Name, network, addr)
}

// DialContext dials from inside the namespace (its loopback included).
func (n *FaultNet) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNamespace(n.Name, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil && c != nil {
		c.Close()
		c = nil
	}
	return c, err
}

// HTTPClient is an HTTP client whose connections are opened inside the
// namespace: it reaches a daemon's health port on the namespace's
// loopback, also while the pair is black-holed.
func (n *FaultNet) HTTPClient() *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext:       n.DialContext,
		DisableKeepAlives: true,
	}}
}

// inNamespace runs fn on a thread that is in network namespace ns; the
// sockets fn opens stay in ns. The thread goes back to its own namespace
// and is unlocked after (see listenIn for why).
func inNamespace(ns string, fn func() error) error {
	res := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			res <- fmt.Errorf("open this thread's namespace: %w", err)
			return
		}
		defer own.Close()
		err = enterAndRun(ns, fn)
		if serr := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); serr != nil {
			// Stuck in ns: the thread stays locked and ends with this goroutine.
			res <- fmt.Errorf("return from namespace %s: %w", ns, serr)
			return
		}
		runtime.UnlockOSThread()
		res <- err
	}()
	return <-res
}

// enterAndRun enters ns on this (locked) thread and runs fn there.
func enterAndRun(ns string, fn func() error) error {
	f, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter namespace %s: %w", ns, err)
	}
	return fn()
}
