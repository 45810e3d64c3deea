package server

import (
	"strings"
	"testing"
	"time"
)

// Every bound refuses zero and absurd values, naming its flag and the
// allowed range.
func TestBoundsValidateNamesTheFlag(t *testing.T) {
	if b := DefaultBounds(); len(b.validate()) != 0 {
		t.Fatalf("default bounds refused: %v", b.validate())
	}
	for _, tc := range []struct {
		mut  func(*Bounds)
		flag string
	}{
		{func(b *Bounds) { b.ConnectMaxHeaderBytes = 0 }, "--connect-max-header-bytes 0: want 512 to 1048576"},
		{func(b *Bounds) { b.ConnectMaxHeaderBytes = 8 << 20 }, "--connect-max-header-bytes"},
		{func(b *Bounds) { b.ConnectHeaderTimeout = 0 }, "--connect-header-timeout 0s: want more than 0"},
		{func(b *Bounds) { b.AgentHandshakeTimeout = -time.Second }, "--agent-handshake-timeout"},
		{func(b *Bounds) { b.MaxPendingDialsPerClient = 0 }, "--max-pending-dials-per-client 0: want 1 to"},
		{func(b *Bounds) { b.MaxPendingDialsPerAgent = -1 }, "--max-pending-dials-per-agent"},
		{func(b *Bounds) { b.MaxLinksPerAgent = 0 }, "--max-links-per-agent"},
		{func(b *Bounds) { b.MaxControlMessageBytes = 100 }, "--max-control-message-bytes 100: want 4096 to"},
	} {
		c := DefaultConfig()
		tc.mut(&c.Bounds)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%v, want an error containing %q", err, tc.flag)
		}
	}
}
