package harness

import (
	"net/netip"
	"os"
	"testing"
)

// A removed host address stays out of other tests' hands until its test
// ends: a namespace made meanwhile gets another /30, and the /30 is free
// again once the test that removed it has cleaned up.
func TestRemovedHostAddrHeldUntilCleanup(t *testing.T) {
	var removed netip.Prefix
	t.Run("remove", func(t *testing.T) {
		n := NewFaultNet(t)
		a := n.AddHostAddr(t)
		n.RouteHostAddr(t, a)
		removed = netip.PrefixFrom(a, 30).Masked()
		n.RemoveHostAddr(t, a)
		if _, err := os.Stat(heldSlash30File(removed)); err != nil {
			t.Fatalf("%s is not held after RemoveHostAddr: %v", removed, err)
		}
		for i := range 3 {
			other := NewFaultNet(t)
			if got := netip.PrefixFrom(other.HostAddr, 30).Masked(); got == removed {
				t.Fatalf("namespace %d was given %s, the /30 of the address just removed", i, got)
			}
		}
		unlock := slash30Lock(t)
		defer unlock()
		if !heldSlash30s()[removed] {
			t.Errorf("heldSlash30s does not list %s", removed)
		}
	})
	if _, err := os.Stat(heldSlash30File(removed)); !os.IsNotExist(err) {
		t.Fatalf("%s still held after its test ended (stat: %v)", removed, err)
	}
}

// A /30 held by a process that is gone (killed before its cleanup) is
// freed by the next pick.
func TestHeldSlash30OfDeadProcessFreed(t *testing.T) {
	RequireBlackhole(t)
	unlock := slash30Lock(t)
	defer unlock()
	if err := os.MkdirAll(heldSlash30Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix("203.0.113.252/30")
	f := heldSlash30File(p)
	// 2^22+1 is above any pid_max Linux allows: no process has it.
	if err := os.WriteFile(f, []byte("4194305"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f) })
	if heldSlash30s()[p] {
		t.Errorf("%s held by a process that does not exist", p)
	}
	if _, err := os.Stat(f); !os.IsNotExist(err) {
		t.Errorf("the stale hold %s was not removed (stat: %v)", f, err)
	}
}
