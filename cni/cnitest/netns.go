// Package cnitest runs rendered CNI configs for real in tests: it builds
// containernetworking's reference plugins, makes network namespaces, and
// drives the plugins with libcni from inside a "node" namespace, so that
// the bridge, routes and firewall rules they create never touch the host.
// Everything it makes is removed at test cleanup.
package cnitest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Names carry the test process's pid, so that a later run can remove what
// a killed run left behind (a test binary killed by -timeout runs no
// cleanup).
const nsPrefix = "isthmus-cni"

var nsSeq atomic.Int32

// RequireNetNS skips t unless network namespaces can be made here: root
// and the ip program (package iproute2).
func RequireNetNS(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces, veths and bridges (run the tests as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("needs the ip program to create network namespaces (apt-get install iproute2): %v", err)
	}
}

// NetNS is a network namespace made by a test with `ip netns add`, so
// `ip netns exec NAME` can start processes in it. It is deleted at cleanup.
type NetNS struct {
	Name string // the ip-netns name
	Path string // /var/run/netns/NAME, for CNI_NETNS
	ns   ns.NetNS
}

// NewNetNS makes a namespace whose name contains role, with lo up. It
// skips t where namespaces cannot be made.
func NewNetNS(t testing.TB, role string) *NetNS {
	t.Helper()
	RequireNetNS(t)
	sweepStale(t)
	n := &NetNS{Name: fmt.Sprintf("%s%d-%d-%s", nsPrefix, os.Getpid(), nsSeq.Add(1), role)}
	n.Path = "/var/run/netns/" + n.Name
	Run(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() { n.remove(t) })
	h, err := ns.GetNS(n.Path)
	if err != nil {
		t.Fatalf("open namespace %s: %v", n.Name, err)
	}
	n.ns = h
	Run(t, "ip", "-n", n.Name, "link", "set", "lo", "up")
	return n
}

func (n *NetNS) remove(t testing.TB) {
	t.Helper()
	if n.ns != nil {
		n.ns.Close()
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
		t.Errorf("cleanup: ip netns del %s: %v\n%s", n.Name, err, out)
	}
}

// Do runs f on an OS thread switched into the namespace. Sockets f creates
// stay in the namespace after Do returns; processes f starts run in it.
func (n *NetNS) Do(f func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return f() })
}

// InPath runs f on an OS thread switched into the namespace at path.
func InPath(path string, f func() error) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return f() })
}

// Listen opens a listener inside the namespace.
func (n *NetNS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// Dial dials from inside the namespace.
func (n *NetNS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Run runs a command and fails t on error, returning its trimmed output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// sweepStale removes the namespaces of test processes that no longer run.
func sweepStale(t testing.TB) {
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
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pidStr); !errors.Is(err, os.ErrNotExist) {
			continue // still running (or the pid was reused: leave it)
		}
		t.Logf("removing namespace %s left by test process %d", e.Name(), pid)
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			t.Logf("ip netns del %s: %v: %s", e.Name(), err, out)
		}
	}
}
