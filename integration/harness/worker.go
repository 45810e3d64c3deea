package harness

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// Worker is a network namespace made by a test that stands for a worker
// node behind a firewall: it can open connections to the host (an agent
// dialling out to proxy-server), but nothing from the host can open a
// connection into it. Its address is on the veth that joins it to the
// host, in 203.0.113.0/24 (TEST-NET-3), so nothing leaves the machine.
type Worker struct {
	Name     string     // the namespace (ip netns)
	HostIf   string     // host end of the veth pair
	HostAddr netip.Addr // host end: where the worker reaches the control plane
	NodeAddr netip.Addr // the worker's own address (a node's InternalIP)
}

// workerRules accept what the worker itself opened and its own loopback,
// and drop every new connection that comes in over the veth.
const workerRules = `table inet isthmus_worker {
  chain input {
    type filter hook input priority 0; policy drop;
    iifname "lo" accept
    ct state established,related accept
  }
}
`

// NewWorker creates the namespace, the veth pair and the firewall; all of
// it is removed at cleanup. It skips t when not root or ip/nft is missing.
func NewWorker(t testing.TB) *Worker {
	t.Helper()
	b := newVethNamespace(t, workerRules)
	return &Worker{Name: b.Name, HostIf: b.HostIf, HostAddr: b.HostAddr, NodeAddr: b.NSAddr}
}

// Listen opens a listener inside the worker's namespace.
func (w *Worker) Listen(network, addr string) (net.Listener, error) {
	return listenIn(w.Name, network, addr)
}

// listenIn opens a listener inside network namespace ns. The socket stays
// in that namespace; the goroutines that serve it can run anywhere.
//
// The thread goes back to its own namespace and is unlocked: a thread left
// to die with its locked goroutine would take with it every process that
// thread had started, as Start sets Pdeathsig, which Linux ties to the
// parent thread, not the parent process.
func listenIn(ns, network, addr string) (net.Listener, error) {
	type result struct {
		l   net.Listener
		err error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			res <- result{err: fmt.Errorf("open this thread's namespace: %w", err)}
			return
		}
		defer own.Close()
		l, err := listenInLocked(ns, network, addr)
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stuck in ns: the thread must not run anything else, so it
			// stays locked and ends with this goroutine.
			if l != nil {
				l.Close()
			}
			res <- result{err: fmt.Errorf("return from namespace %s: %w", ns, err)}
			return
		}
		runtime.UnlockOSThread()
		res <- result{l, err}
	}()
	r := <-res
	return r.l, r.err
}

// listenInLocked enters ns on this (locked) thread and listens there.
func listenInLocked(ns, network, addr string) (net.Listener, error) {
	f, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("enter namespace %s: %w", ns, err)
	}
	return net.Listen(network, addr)
}

// Dial dials from inside the worker's namespace (what a process on the
// worker reaches: its own listeners, the pod network).
func (w *Worker) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.WithNetNSPath("/var/run/netns/"+w.Name, func(ns.NetNS) error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command is cmd run inside the worker's namespace.
func (w *Worker) Command(bin string, args ...string) (string, []string) {
	return "ip", append([]string{"netns", "exec", w.Name, bin}, args...)
}

// newVethNamespace creates a namespace joined to the host by a veth pair
// with a /30 of 203.0.113.0/24, loads nftRules into it, and checks that its
// address routes to the veth. Names follow NewBlackhole's, so that
// sweepStaleBlackholes also removes what a killed test left.
func newVethNamespace(t testing.TB, nftRules string) *Blackhole {
	t.Helper()
	RequireBlackhole(t)
	sweepStaleBlackholes(t)
	seq := blackholeSeq.Add(1)
	pid := os.Getpid()
	b := &Blackhole{
		Name:   fmt.Sprintf("%s%d-%d", nsPrefix, pid, seq),
		HostIf: fmt.Sprintf("%s%dh%d", ifPrefix, pid, seq),
	}
	nsIf := fmt.Sprintf("%s%dn%d", ifPrefix, pid, seq)
	if len(b.HostIf) > 15 || len(nsIf) > 15 {
		t.Fatalf("interface name %q too long", b.HostIf)
	}
	t.Cleanup(func() { b.remove(t) })
	bhRun(t, "ip", "netns", "add", b.Name)
	bhRun(t, "ip", "link", "add", b.HostIf, "type", "veth", "peer", "name", nsIf)
	bhRun(t, "ip", "link", "set", nsIf, "netns", b.Name)
	b.HostAddr, b.NSAddr = addSlash30(t, func(host, _ netip.Addr) {
		bhRun(t, "ip", "addr", "add", netip.PrefixFrom(host, 30).String(), "dev", b.HostIf)
	})
	bhRun(t, "ip", "link", "set", b.HostIf, "up")
	bhRun(t, "ip", "-n", b.Name, "addr", "add", netip.PrefixFrom(b.NSAddr, 30).String(), "dev", nsIf)
	bhRun(t, "ip", "-n", b.Name, "link", "set", nsIf, "up")
	bhRun(t, "ip", "-n", b.Name, "link", "set", "lo", "up")
	separateEphemeralPorts(t, b.Name)
	nft := exec.Command("ip", "netns", "exec", b.Name, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(nftRules)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", b.Name, err, out)
	}
	// Never send a packet off the machine: the address must route to our veth.
	out := bhRun(t, "ip", "-o", "route", "get", b.NSAddr.String())
	if !strings.Contains(" "+out+" ", " dev "+b.HostIf+" ") {
		t.Fatalf("%s does not route to %s: %q", b.NSAddr, b.HostIf, out)
	}
	return b
}

// separateEphemeralPorts moves namespace ns's ephemeral ports above the
// host's. Tests pick the ports of daemons they start in a namespace on the
// host (FreePort: the host's ephemeral range; FreeRegisteredPort:
// 20000-32767); in the namespace, a port the kernel hands out (a backend
// listening on :0, the local end of a connection) could be one of them,
// and the daemon then fails to bind it.
func separateEphemeralPorts(t testing.TB, ns string) {
	t.Helper()
	const file = "/proc/sys/net/ipv4/ip_local_port_range"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the host's ephemeral ports: %v", err)
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		t.Fatalf("the host's ephemeral ports: %q: %v", b, err)
	}
	if high > 65535-1000 {
		return // no room above: as before
	}
	bhRun(t, "ip", "netns", "exec", ns, "sh", "-c", fmt.Sprintf("echo %d 65535 > %s", high+1, file))
}

// addSlash30 picks a /30 no interface uses and has add put its first
// address on the host's end (the second is the namespace's), under the
// lock that keeps two tests from picking the same one; it returns both.
func addSlash30(t testing.TB, add func(host, ns netip.Addr)) (host, ns netip.Addr) {
	t.Helper()
	unlock := slash30Lock(t)
	defer unlock()
	prefix, err := freeSlash30()
	if err != nil {
		t.Fatal(err)
	}
	host = prefix.Addr().Next()
	ns = host.Next()
	add(host, ns)
	return host, ns
}
