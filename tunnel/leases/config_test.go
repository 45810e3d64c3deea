package leases

import (
	"maps"
	"strings"
	"testing"
	"time"
)

func TestParseLabels(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
		err  string // substring of the error; "" for success
	}{
		{in: "k8s-app=konnectivity-server", want: map[string]string{"k8s-app": "konnectivity-server"}},
		{in: "a=1,b=2", want: map[string]string{"a": "1", "b": "2"}},
		{in: " a = 1 , example.com/b=x_y.z ", want: map[string]string{"a": "1", "example.com/b": "x_y.z"}},
		{in: "a=", want: map[string]string{"a": ""}}, // an empty value is a label value
		{in: "a=1,a=1", want: map[string]string{"a": "1"}},
		{in: "", err: "no labels"},
		{in: "  ", err: "no labels"},
		{in: "a", err: `label "a": want key=value`},
		{in: "a=1,", err: `label "": want key=value`},
		{in: "a=b=c", err: `label "a=b=c": want key=value`},
		{in: "=x", err: `label key ""`},
		{in: "a b=x", err: `label key "a b"`},
		{in: "a=has space", err: `value "has space"`},
		{in: "a=" + strings.Repeat("v", 64), err: "value"},
		{in: "a=1,a=2", err: `label key "a" given twice`},
	} {
		got, err := ParseLabels(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseLabels(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !maps.Equal(got, tc.want) {
			t.Errorf("ParseLabels(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestControllerConfigDefaults(t *testing.T) {
	c, err := goodControllerConfig(t).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Duration != 30*time.Second || c.RenewInterval != 15*time.Second || c.GCInterval != 15*time.Second {
		t.Errorf("defaults: duration %v, renew %v, gc %v; want ANP's 30s, 15s, 15s", c.Duration, c.RenewInterval, c.GCInterval)
	}
	if c.Log == nil {
		t.Error("nil Log not replaced")
	}
}

func TestControllerConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*ControllerConfig)
		want   string // substring naming the field's flag and the fault
	}{
		{"no client", func(c *ControllerConfig) { c.Client = nil }, "--kubeconfig"},
		{"no namespace", func(c *ControllerConfig) { c.Namespace = "" }, `lease namespace "" (--lease-namespace)`},
		{"bad namespace", func(c *ControllerConfig) { c.Namespace = "Kube_System" }, "--lease-namespace"},
		{"no labels", func(c *ControllerConfig) { c.Labels = nil }, "no lease labels (--lease-label"},
		{"bad label", func(c *ControllerConfig) { c.Labels = map[string]string{"a": "b c"} }, "(--lease-label)"},
		{"no server id", func(c *ControllerConfig) { c.ServerID = "" }, "no server id (--server-id)"},
		{"server id not a name", func(c *ControllerConfig) { c.ServerID = "Server_1" }, `lease name "konnectivity-proxy-server-Server_1"`},
		{"fractional duration", func(c *ControllerConfig) { c.Duration = 1500 * time.Millisecond }, "(--lease-duration): a lease's duration is whole seconds"},
		{"negative duration", func(c *ControllerConfig) { c.Duration = -time.Second }, "--lease-duration"},
		{"renew not shorter", func(c *ControllerConfig) { c.Duration, c.RenewInterval = 10*time.Second, 10*time.Second }, "(--lease-renewal-interval) must be positive and shorter"},
		{"renew past default duration", func(c *ControllerConfig) { c.RenewInterval = time.Minute }, "shorter than the lease duration 30s"},
		{"negative gc", func(c *ControllerConfig) { c.GCInterval = -time.Second }, "(--lease-gc-interval) must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := goodControllerConfig(t)
			tc.change(&cfg)
			_, err := NewController(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewController: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestControllerConfigReportsEveryFault(t *testing.T) {
	_, err := NewController(ControllerConfig{Client: nowhere(t)})
	if err == nil {
		t.Fatal("NewController accepted an empty ControllerConfig")
	}
	for _, want := range []string{"--lease-namespace", "--lease-label", "--server-id"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestCounterConfig(t *testing.T) {
	ok := goodCounterConfig(t)
	ok.Selector = " k8s-app = konnectivity-server "
	c, err := NewCounter(ok)
	if err != nil {
		t.Fatal(err)
	}
	if c.selector != "k8s-app=konnectivity-server" || c.Count() != 1 {
		t.Errorf("selector %q, count %d", c.selector, c.Count())
	}
	// ANP's agent takes any label selector.
	ok.Selector = "k8s-app in (konnectivity-server,proxy),tier!=test"
	if _, err := NewCounter(ok); err != nil {
		t.Errorf("set-based selector: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*CounterConfig)
		want   string
	}{
		{"no client", func(c *CounterConfig) { c.Client = nil }, "--kubeconfig"},
		{"no namespace", func(c *CounterConfig) { c.Namespace = "" }, `lease namespace "" (--lease-namespace)`},
		{"no selector", func(c *CounterConfig) { c.Selector = "" }, "no lease selector (--lease-label"},
		{"bad selector", func(c *CounterConfig) { c.Selector = "a==b==c" }, `lease selector "a==b==c" (--lease-label) is not a label selector`},
	} {
		cfg := ok
		tc.change(&cfg)
		if _, err := NewCounter(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error containing %q", tc.name, err, tc.want)
		}
	}
}
