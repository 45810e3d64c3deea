package preflight

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"isthmus.dev/cni/cnitest"
)

// TestProbeUDPGivenItsOwnPort: probing a free port of this host, the probe's
// socket can be given that very port and read its own datagram back. In a
// namespace whose only ephemeral port is the probed one that always
// happens: the probe must not call it an answer.
func TestProbeUDPGivenItsOwnPort(t *testing.T) {
	n := cnitest.NewNetNS(t, "udpself")
	const port = 40999
	err := n.Do(func() error {
		// /proc/sys/net is the namespace of the thread that opens it.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40999 40999"), 0o644); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, detail := probeUDP(ctx, Check{Service: "Calico VXLAN", Kind: Reach, Proto: "udp", Host: "127.0.0.1", Port: port})
		if st != Fail || !strings.Contains(detail, "nothing listens") {
			t.Errorf("probe of a free port given to the probe itself: %s %q, want fail: nothing listens", st, detail)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
