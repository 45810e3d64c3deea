package app

import (
	"testing"
	"time"

	"isthmus.dev/tunnel/limits"
)

// The bounds' flags map onto the config, and a bad value stops the start
// naming the flag.
func TestBoundsFlags(t *testing.T) {
	c, err := parse(t, with(certAuth, "--connect-max-header-bytes=8192", "--connect-header-timeout=3s",
		"--max-pending-dials-per-client=9", "--max-pending-dials-per-agent=8", "--max-links-per-agent=2",
		"--agent-handshake-timeout=4s", "--max-control-message-bytes=16384")...)
	if err != nil {
		t.Fatal(err)
	}
	b := c.Config.Bounds
	if b.ConnectMaxHeaderBytes != 8192 || b.ConnectHeaderTimeout != 3*time.Second || b.MaxPendingDialsPerClient != 9 ||
		b.MaxPendingDialsPerAgent != 8 || b.MaxLinksPerAgent != 2 || b.AgentHandshakeTimeout != 4*time.Second ||
		b.MaxControlMessageBytes != 16384 {
		t.Fatalf("bounds %+v", b)
	}
	if _, err := parse(t, with(certAuth, "--max-links-per-agent=0")...); err == nil {
		t.Fatal("--max-links-per-agent=0 accepted")
	}
}

// Every bound the server counts in limit_hits_total has the flag that
// limits.Flags names for it (the log lines and the soak table name it).
func TestEveryLimitHasItsFlag(t *testing.T) {
	fs := New().FlagSet()
	for _, l := range limits.ServerLimits {
		name, ok := limits.Flags[l]
		if !ok || fs.Lookup(name) == nil {
			t.Errorf("limit %s: flag %q (in limits.Flags: %v) is not a proxy-server flag", l, name, ok)
		}
	}
}
