package agent

import (
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
)

func TestValidateNamesTheFlag(t *testing.T) {
	if c := DefaultConfig(); c.Validate() != nil {
		t.Fatalf("defaults refused: %v", c.Validate())
	}
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		flag string
	}{
		{"no host", func(c *Config) { c.ProxyServerHosts = nil }, "--proxy-server-host"},
		{"host with port", func(c *Config) { c.ProxyServerHosts = []string{"10.0.0.1:8132"} }, "--proxy-server-port"},
		{"duplicate host", func(c *Config) { c.ProxyServerHosts = []string{"a", "a"} }, "listed twice"},
		{"port", func(c *Config) { c.ProxyServerPort = 0 }, "--proxy-server-port"},
		{"half a key pair", func(c *Config) { c.AgentCert = "x" }, "--agent-key"},
		{"identifiers", func(c *Config) { c.AgentIdentifiers = "ipv4=nope" }, "--agent-identifiers"},
		{"intervals", func(c *Config) { c.SyncIntervalCap = 0 }, "--sync-interval"},
		{"dial timeout", func(c *Config) { c.DialTimeout = 0 }, "--backend-dial-timeout"},
		{"policy", func(c *Config) { c.AllowedDestinations = "10.0.0.0/8:http" }, "--allowed-destinations"},
		{"count source", func(c *Config) { c.ServerCountSource = "min" }, "--server-count-source"},
		{"leases need one host", func(c *Config) { c.CountServerLeases = true; c.ProxyServerHosts = []string{"a", "b"} }, "ONE --proxy-server-host"},
		{"lease label", func(c *Config) { c.CountServerLeases = true; c.LeaseLabel = "a=b=c" }, "--lease-label"},
		{"lease namespace", func(c *Config) { c.CountServerLeases = true; c.LeaseNamespace = "" }, "--lease-namespace"},
		{"pending dials", func(c *Config) { c.MaxPendingDials = 0 }, "--max-pending-dials-per-server 0: want 1 to"},
		{"control message", func(c *Config) { c.MaxControlMessageBytes = 1 << 30 }, "--max-control-message-bytes"},
	} {
		c := DefaultConfig()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.flag)
		}
	}
	c := DefaultConfig()
	c.ProxyServerHosts = []string{"fd00::1", "[fd00::2]", "server.example"}
	if err := c.Validate(); err != nil {
		t.Errorf("IPv6 and names refused: %v", err)
	}
}

func TestServerHeaders(t *testing.T) {
	id, n, err := serverHeaders(metadata.Pairs("serverID", "s1", "serverCount", "3"))
	if err != nil || id != "s1" || n != 3 {
		t.Fatalf("%q %d %v", id, n, err)
	}
	for _, md := range []metadata.MD{
		metadata.Pairs("serverCount", "1"),
		metadata.Pairs("serverID", "s1"),
		metadata.Pairs("serverID", "s1", "serverID", "s2", "serverCount", "1"),
		metadata.Pairs("serverID", "s1", "serverCount", "0"),
		metadata.Pairs("serverID", "s1", "serverCount", "x"),
	} {
		if _, _, err := serverHeaders(md); err == nil {
			t.Errorf("accepted %v", md)
		}
	}
}

func TestRandomIDsDiffer(t *testing.T) {
	a, b := randomID(), randomID()
	if a == b || len(a) != 36 {
		t.Fatalf("ids %q %q", a, b)
	}
}
