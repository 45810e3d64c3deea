package harness

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Blackhole is a network namespace made by a test, joined to the host by a
// veth pair, whose nftables input chain drops every packet. A TCP dial from
// the host to NSAddr sends SYNs that are never answered: the dial hangs
// until its own timeout. Nothing leaves the machine: the host end holds a
// /30 of 203.0.113.0/24 (TEST-NET-3), routed to the veth.
type Blackhole struct {
	Name     string     // the namespace (ip netns)
	HostIf   string     // host end of the veth pair
	HostAddr netip.Addr // address of the host end
	NSAddr   netip.Addr // address inside the namespace; dials to it hang
}

// blackholeNet is the /24 the namespaces take their /30s from.
var blackholeNet = netip.MustParsePrefix("203.0.113.0/24")

var blackholeSeq atomic.Int32

// Names carry the test process's pid, so that a later run can remove what a
// killed run left behind (a test binary killed by -timeout runs no cleanup).
const (
	nsPrefix = "isthmus-t"
	ifPrefix = "ist"
)

// RequireBlackhole skips t unless a Blackhole can be made here: it needs
// root and the ip and nft programs (packages iproute2 and nftables).
func RequireBlackhole(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace and a veth pair (run the tests as root)")
	}
	for _, prog := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("needs the %q program to build a black-hole namespace (apt-get install iproute2 nftables): %v", prog, err)
		}
	}
}

// NewBlackhole creates the namespace, the veth pair and the drop-all input
// chain; all of it is removed at cleanup, also when the test fails. It skips
// t when not root or when ip or nft is missing.
func NewBlackhole(t testing.TB) *Blackhole {
	t.Helper()
	return newVethNamespace(t, "table inet isthmus_blackhole {\n"+
		"  chain input { type filter hook input priority 0; policy drop; }\n"+
		"}\n")
}

// Addr is NSAddr:port, a TCP address whose dial hangs.
func (b *Blackhole) Addr(port int) string {
	return net.JoinHostPort(b.NSAddr.String(), strconv.Itoa(port))
}

// Sockets counts the TCP sockets of the host namespace (any process, any
// state) whose remote address is NSAddr: a dial still pending, or a
// connection left behind.
func (b *Blackhole) Sockets(t testing.TB) int {
	t.Helper()
	n, err := countTCPSocketsTo(b.NSAddr)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *Blackhole) remove(t testing.TB) {
	t.Helper()
	// Deleting the host end deletes its peer; the namespace goes next.
	if out, err := exec.Command("ip", "link", "del", b.HostIf).CombinedOutput(); err != nil && !bhNotFound(out) {
		t.Errorf("cleanup: ip link del %s: %v\n%s", b.HostIf, err, out)
	}
	if out, err := exec.Command("ip", "netns", "del", b.Name).CombinedOutput(); err != nil && !bhNotFound(out) {
		t.Errorf("cleanup: ip netns del %s: %v\n%s", b.Name, err, out)
	}
}

func bhNotFound(out []byte) bool {
	s := string(out)
	return strings.Contains(s, "Cannot find device") || strings.Contains(s, "No such file")
}

func bhRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// bhLock takes an exclusive flock on path, waiting at most wait, and returns the
// unlock func.
func bhLock(t testing.TB, path string, wait time.Duration) (unlock func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			t.Fatalf("lock %s: %v", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
}

// slash30Lock takes the lock under which tests of every process pick, hold
// and free /30s of blackholeNet.
func slash30Lock(t testing.TB) (unlock func()) {
	t.Helper()
	return bhLock(t, filepath.Join(os.TempDir(), "isthmus-blackhole.lock"), 30*time.Second)
}

// heldSlash30Dir has a file per /30 a test holds with no address on an
// interface (RemoveHostAddr), naming the process that holds it.
func heldSlash30Dir() string { return filepath.Join(os.TempDir(), "isthmus-slash30-held") }

func heldSlash30File(p netip.Prefix) string {
	return filepath.Join(heldSlash30Dir(), strings.ReplaceAll(p.String(), "/", "_"))
}

// holdSlash30 keeps p from freeSlash30 until t ends. The caller holds
// slash30Lock.
func holdSlash30(t testing.TB, p netip.Prefix) {
	t.Helper()
	if err := os.MkdirAll(heldSlash30Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	f := heldSlash30File(p)
	if err := os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("free %s: %v", p, err)
		}
	})
}

// heldSlash30s are the /30s held by live processes; the files of processes
// gone (a test killed before its cleanup) are removed. The caller holds
// slash30Lock.
func heldSlash30s() map[netip.Prefix]bool {
	held := map[netip.Prefix]bool{}
	ents, err := os.ReadDir(heldSlash30Dir())
	if err != nil {
		return held // none held yet
	}
	for _, e := range ents {
		f := filepath.Join(heldSlash30Dir(), e.Name())
		p, perr := netip.ParsePrefix(strings.ReplaceAll(e.Name(), "_", "/"))
		b, rerr := os.ReadFile(f)
		pid, aerr := strconv.Atoi(strings.TrimSpace(string(b)))
		if perr != nil || rerr != nil || aerr != nil || !processAlive(pid) {
			_ = os.Remove(f)
			continue
		}
		held[p] = true
	}
	return held
}

// processAlive reports whether process pid is running (or the pid was
// reused: what it left is then left alone).
func processAlive(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// freeSlash30 returns a /30 of blackholeNet that no interface of the host
// namespace has an address in and no test holds (holdSlash30). The caller
// holds slash30Lock.
func freeSlash30() (netip.Prefix, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Prefix{}, err
	}
	used := heldSlash30s()
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if blackholeNet.Contains(ip) {
			p, _ := ip.Prefix(30)
			used[p] = true
		}
	}
	for p := blackholeNet.Addr(); blackholeNet.Contains(p); {
		pre := netip.PrefixFrom(p, 30)
		if !used[pre] {
			return pre, nil
		}
		for range 4 {
			p = p.Next()
		}
	}
	return netip.Prefix{}, fmt.Errorf("every /30 of %s is in use on this host", blackholeNet)
}

// sweepStaleBlackholes removes the namespaces and veths of test processes
// that no longer run.
func sweepStaleBlackholes(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, seq, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if processAlive(pid) {
			continue
		}
		t.Logf("removing namespace %s left by test process %d", e.Name(), pid)
		stale := &Blackhole{Name: e.Name(), HostIf: fmt.Sprintf("%s%dh%s", ifPrefix, pid, seq)}
		stale.remove(t)
	}
}

// countTCPSocketsTo counts the entries of /proc/net/tcp and /proc/net/tcp6
// whose remote address is addr (IPv4, also as v4-mapped IPv6).
func countTCPSocketsTo(addr netip.Addr) (int, error) {
	a4 := addr.As4()
	// /proc/net/tcp prints each 32-bit word in host (little-endian) order.
	v4 := strings.ToUpper(hex.EncodeToString([]byte{a4[3], a4[2], a4[1], a4[0]}))
	v6 := "0000000000000000FFFF0000" + v4
	n := 0
	for file, want := range map[string]string{"/proc/net/tcp": v4, "/proc/net/tcp6": v6} {
		f, err := os.Open(file)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return 0, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			remote, _, _ := strings.Cut(fields[2], ":")
			if strings.EqualFold(remote, want) {
				n++
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}
