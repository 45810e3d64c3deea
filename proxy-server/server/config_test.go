package server

import (
	"strings"
	"testing"
)

func TestValidateNamesTheFlag(t *testing.T) {
	good := func() Config {
		c := DefaultConfig()
		c.UDSName, c.ServerPort = "/tmp/x.sock", 0
		c.ClusterCert, c.ClusterKey = "c", "k"
		return c
	}
	if c := good(); c.Validate() != nil {
		t.Fatalf("good config refused: %v", c.Validate())
	}
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		flag string
	}{
		{"mode", func(c *Config) { c.Mode = "socks" }, "--mode"},
		{"uds with port", func(c *Config) { c.ServerPort = 8090 }, "--server-port"},
		{"tcp without certs", func(c *Config) { c.UDSName = ""; c.ServerPort = 8090 }, "--server-ca-cert"},
		{"agent port", func(c *Config) { c.AgentPort = 70000 }, "--agent-port"},
		{"no cluster cert", func(c *Config) { c.ClusterCert = "" }, "--cluster-cert"},
		{"server count", func(c *Config) { c.ServerCount = 0 }, "--server-count"},
		{"tls version", func(c *Config) { c.TLSMinVersion = "VersionTLS10" }, "--tls-min-version"},
		{"cipher", func(c *Config) { c.CipherSuites = []string{"RC4"} }, "--cipher-suites"},
		{"queue", func(c *Config) { c.QueueBytes = 10 }, "--conn-queue-bytes"},
		{"no server id", func(c *Config) { c.ServerID = "" }, "--server-id"},
	} {
		c := good()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.flag)
		}
	}
}
