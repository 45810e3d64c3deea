package server

import (
	"strings"
	"testing"
	"time"
)

func TestValidateNamesTheFlag(t *testing.T) {
	good := func() Config {
		c := DefaultConfig()
		c.UDSName, c.ServerPort = "/tmp/x.sock", 0
		c.ClusterCert, c.ClusterKey, c.ClusterCACert = "c", "k", "ca"
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
		{"no agent auth", func(c *Config) { c.ClusterCACert = "" }, "--allow-unauthenticated-agents"},
		{"partial token auth", func(c *Config) { c.AgentNamespace = "kube-system" }, "--authentication-audience"},
		{"contention", func(c *Config) { c.EnableContentionProfiling = true }, "--enable-profiling"},
		{"content type", func(c *Config) { c.KubeAPIContentType = "" }, "--kube-api-content-type"},
		{"lease label", func(c *Config) { c.EnableLeaseController, c.LeaseLabel = true, "" }, "--lease-label"},
		{"lease renewal", func(c *Config) { c.EnableLeaseController, c.LeaseRenewalInterval = true, time.Minute }, "--lease-renewal-interval"},
		{"uds and server cert", func(c *Config) { c.ServerKey = "k" }, "--uds-name"},
	} {
		c := good()
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.flag)
		}
	}
}

func TestAgentAuthentication(t *testing.T) {
	c := DefaultConfig()
	c.UDSName, c.ServerPort, c.ClusterCert, c.ClusterKey = "/tmp/x.sock", 0, "c", "k"
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		ok   bool
	}{
		{"nothing", func(*Config) {}, false},
		{"opt-out", func(c *Config) { c.AllowUnauthenticatedAgents = true }, true},
		{"certificates", func(c *Config) { c.ClusterCACert = "ca" }, true},
		{"tokens", func(c *Config) { c.AgentNamespace, c.AgentServiceAccount, c.AuthenticationAudience = "ns", "sa", "aud" }, true},
		{"both", func(c *Config) {
			c.ClusterCACert, c.AgentNamespace, c.AgentServiceAccount, c.AuthenticationAudience = "ca", "ns", "sa", "aud"
		}, true},
	} {
		cc := c
		tc.mut(&cc)
		if err := cc.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want accepted=%v", tc.name, err, tc.ok)
		}
	}
}
