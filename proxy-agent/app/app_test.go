package app

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"isthmus.dev/tunnel/limits"
)

// The kubeadm guide's agent command line parses into the Config it means.
func TestKubeadmCommandLine(t *testing.T) {
	o, err := Parse([]string{"--logtostderr=true", "--ca-cert=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
		"--proxy-server-host=konnectivity-server.kube-system", "--proxy-server-port=8132", "--admin-server-port=8133",
		"--health-server-port=8134", "--service-account-token-path=/var/run/secrets/tokens/konnectivity-agent-token"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := o.Config
	if len(c.ProxyServerHosts) != 1 || c.ProxyServerHosts[0] != "konnectivity-server.kube-system" || c.ProxyServerPort != 8132 ||
		c.AdminPort != 8133 || c.HealthPort != 8134 || c.TokenPath != "/var/run/secrets/tokens/konnectivity-agent-token" ||
		c.CACert != "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt" {
		t.Fatalf("config %+v", c)
	}
}

func TestFlagsMapOntoConfig(t *testing.T) {
	o, err := Parse([]string{"--proxy-server-host= a , b ", "--allowed-destinations=10.0.0.0/8:10250", "--sync-forever",
		"--backend-dial-timeout=3s", "--link", "anp", "--logtostderr", "-v=4"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := o.Config
	if strings.Join(c.ProxyServerHosts, "|") != "a|b" || c.AllowedDestinations != "10.0.0.0/8:10250" || !c.SyncForever ||
		c.DialTimeout != 3*time.Second || c.Link != "anp" {
		t.Fatalf("config %+v", c)
	}
	if c.NativeMux != "yamux" {
		t.Errorf("--native-mux defaults to %q, want yamux", c.NativeMux)
	}
	if o, err := Parse([]string{"--native-mux=isthmus"}, io.Discard); err != nil || o.Config.NativeMux != "isthmus" {
		t.Errorf("--native-mux=isthmus: %v", err)
	}
	if o, err := Parse([]string{"--max-pending-dials-per-server=7", "--max-control-message-bytes=8192"}, io.Discard); err != nil ||
		o.Config.MaxPendingDials != 7 || o.Config.MaxControlMessageBytes != 8192 {
		t.Fatalf("bounds flags: %v", err)
	}
	if _, err := Parse([]string{"--count-server-leases", "--lease-label=k8s-app=konnectivity-server", "--server-count-source=max"}, io.Discard); err != nil {
		t.Fatalf("lease counting refused: %v", err)
	}
}

func TestRefusalsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--xfr-channel-size=0"}, "--xfr-channel-size"},
		{[]string{"--native-mux=quic"}, "--native-mux"},
		{[]string{"--native-mux=isthmus", "--link=anp"}, "--native-mux=isthmus has no effect with --link=anp"},
		{[]string{"--enable-contention-profiling"}, "--enable-profiling"},
		{[]string{"--allowed-destinations=10.0.0.0/8:ssh"}, "--allowed-destinations"},
		{[]string{"--count-server-leases", "--proxy-server-host=a,b"}, "--count-server-leases"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		_, err := Parse(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want an error naming %s", tc.args, err, tc.want)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	var help bytes.Buffer
	if _, err := Parse([]string{"--help"}, &help); !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"--service-account-token-path", "--allowed-destinations", "--count-server-leases", "kubeadm"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help does not mention %s", want)
		}
	}
	// --version answers whatever else is on the line.
	o, err := Parse([]string{"--version", "--xfr-channel-size=0"}, io.Discard)
	if err != nil || !o.Version {
		t.Fatalf("--version: %+v %v", o, err)
	}
}

// Every bound the agent counts in limit_hits_total has the flag that
// limits.Flags names for it (the log lines and the soak table name it).
func TestEveryLimitHasItsFlag(t *testing.T) {
	fs, _, _ := NewFlagSet(io.Discard)
	for _, l := range limits.AgentLimits {
		name, ok := limits.Flags[l]
		if !ok || fs.Lookup(name) == nil {
			t.Errorf("limit %s: flag %q (in limits.Flags: %v) is not a proxy-agent flag", l, name, ok)
		}
	}
}
