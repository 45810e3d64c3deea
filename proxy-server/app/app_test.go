package app

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"isthmus.dev/proxy-server/server"
)

// files makes the files flags name (Validate checks that --kubeconfig
// exists, as ANP does).
type files struct{ kubeconfig string }

func newFiles(t *testing.T) files {
	t.Helper()
	f := files{kubeconfig: filepath.Join(t.TempDir(), "konnectivity-server.conf")}
	if err := os.WriteFile(f.kubeconfig, []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// kubeadm are the flags of kubeadm's "Set up Konnectivity service" guide.
func (f files) kubeadm() []string {
	return []string{
		"--logtostderr=true",
		"--uds-name=/etc/kubernetes/konnectivity-server/konnectivity-server.socket",
		"--delete-existing-uds-file",
		"--cluster-cert=/etc/kubernetes/pki/apiserver.crt",
		"--cluster-key=/etc/kubernetes/pki/apiserver.key",
		"--mode=grpc",
		"--server-port=0",
		"--agent-port=8132",
		"--admin-port=8133",
		"--health-port=8134",
		"--agent-namespace=kube-system",
		"--agent-service-account=konnectivity-agent",
		"--kubeconfig=" + f.kubeconfig,
		"--authentication-audience=system:konnectivity-server",
	}
}

// certAuth is a minimal accepted command line with client certificates.
var certAuth = []string{"--uds-name=/run/k.sock", "--server-port=0", "--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca"}

// with is base and extra in a new slice.
func with(base []string, extra ...string) []string {
	return append(append([]string{}, base...), extra...)
}

func parse(t *testing.T, args ...string) (*Command, error) {
	t.Helper()
	var out bytes.Buffer
	c, err := Parse(args, &out)
	return c, err
}

func TestKubeadmGuideIsAccepted(t *testing.T) {
	f := newFiles(t)
	c, err := parse(t, f.kubeadm()...)
	if err != nil {
		t.Fatalf("kubeadm's flags refused: %v", err)
	}
	cfg := c.Config
	if !cfg.TokenAuth() || cfg.AgentNamespace != "kube-system" || cfg.AgentServiceAccount != "konnectivity-agent" ||
		cfg.AuthenticationAudience != "system:konnectivity-server" || cfg.Kubeconfig != f.kubeconfig || cfg.ClusterCACert != "" {
		t.Errorf("token authentication not configured: %+v", cfg)
	}
	if !cfg.DeleteUDSFile || cfg.AgentPort != 8132 || cfg.AdminPort != 8133 || cfg.HealthPort != 8134 || cfg.KubeAPIContentType != server.ContentTypeProtobuf {
		t.Errorf("config %+v", cfg)
	}
	// Client certificates as well: then an agent needs both (ANP refuses this).
	if _, err := parse(t, with(f.kubeadm(), "--cluster-ca-cert=/etc/kubernetes/pki/ca.crt")...); err != nil {
		t.Errorf("token authentication with --cluster-ca-cert refused: %v", err)
	}
}

// anpDefaults are every flag of ANP v0.36.0's proxy-server
// (cmd/server/app/options/options.go, Flags and NewProxyRunOptions) at its
// default value.
var anpDefaults = map[string]string{
	"server-cert": "", "server-key": "", "server-ca-cert": "", "cluster-cert": "", "cluster-key": "",
	"cluster-ca-cert": "", "mode": "grpc", "uds-name": "", "delete-existing-uds-file": "true",
	"server-port": "8090", "server-bind-address": "", "agent-port": "8091", "agent-bind-address": "",
	"admin-port": "8095", "admin-bind-address": "127.0.0.1", "health-port": "8092", "health-bind-address": "",
	"keepalive-time": "1h0m0s", "frontend-keepalive-time": "1h0m0s", "enable-profiling": "false",
	"enable-contention-profiling": "false", "server-id": "0b9f7d2e-4c1a-4f7e-9d7b-3a2c1e0f5a6b", "server-count": "1",
	"agent-namespace": "", "agent-service-account": "", "kubeconfig": "", "kubeconfig-qps": "0",
	"kubeconfig-burst": "0", "kube-api-content-type": "application/vnd.kubernetes.protobuf",
	"authentication-audience": "", "proxy-strategies": "default", "cipher-suites": "", "tls-min-version": "",
	"xfr-channel-size": "10", "enable-lease-controller": "false", "lease-namespace": "kube-system",
	"lease-label": "k8s-app=konnectivity-server", "graceful-shutdown-timeout": "0s",
	"backend-dial-timeout": "0s", "warn-on-channel-limit": "true",
}

// TestEveryANPFlagAtItsDefault: each ANP flag, given at ANP's default on
// top of a command line that works, is accepted by one of: client
// certificates on a Unix socket frontend, the same on TCP (for the TCP
// frontend's flags), kubeadm's token authentication (for an empty
// --cluster-ca-cert: with neither, no agent would be authenticated). The
// exception are empty --cluster-cert/--cluster-key, which ANP cannot run
// with either (it fails loading the key pair).
func TestEveryANPFlagAtItsDefault(t *testing.T) {
	kubeadm := newFiles(t).kubeadm()
	tcp := []string{"--server-port=8090", "--server-cert=sc", "--server-key=sk", "--server-ca-cert=sca",
		"--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca"}
	refusedByDesign := map[string]string{"cluster-cert": "--cluster-cert and --cluster-key are required", "cluster-key": "--cluster-cert and --cluster-key are required"}
	fs := New().FlagSet()
	for name, def := range anpDefaults {
		if fs.Lookup(name) == nil {
			t.Errorf("--%s: not a flag", name)
			continue
		}
		flag := "--" + name + "=" + def
		_, errUDS := parse(t, with(certAuth, flag)...)
		_, errTCP := parse(t, with(tcp, flag)...)
		_, errToken := parse(t, with(kubeadm, flag)...)
		if why, ok := refusedByDesign[name]; ok {
			if errUDS == nil || !strings.Contains(errUDS.Error(), why) {
				t.Errorf("%s: %v, want %q", flag, errUDS, why)
			}
			continue
		}
		if errUDS != nil && errTCP != nil && errToken != nil {
			t.Errorf("%s refused: with a Unix socket: %v; on TCP: %v; with tokens: %v", flag, errUDS, errTCP, errToken)
		}
	}
}

func TestBooleansWorkBareAnywhere(t *testing.T) {
	c, err := parse(t, with([]string{"--enable-profiling", "--enable-contention-profiling", "--logtostderr"}, certAuth...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Config.EnableProfiling || !c.Config.EnableContentionProfiling {
		t.Errorf("bare booleans not set: %+v", c.Config)
	}
	if _, err := parse(t, with(certAuth, "--log_file=/tmp/x.log", "--skip_headers", "-v=4")...); err != nil {
		t.Errorf("klog's underscore spellings refused: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	f := newFiles(t)
	tokenFlags := []string{"--agent-namespace=kube-system", "--agent-service-account=konnectivity-agent",
		"--authentication-audience=system:konnectivity-server", "--kubeconfig=" + f.kubeconfig}
	base := []string{"--uds-name=/run/k.sock", "--server-port=0", "--cluster-cert=c", "--cluster-key=k"}
	leases := with(certAuth, "--enable-lease-controller")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no agent authentication", base, "agents would not be authenticated"},
		{"namespace alone", with(base, "--agent-namespace=kube-system"), "add --agent-service-account and --authentication-audience"},
		{"no audience", with(base, "--agent-namespace=kube-system", "--agent-service-account=konnectivity-agent"), "add --authentication-audience"},
		{"audience alone", with(base, "--authentication-audience=a"), "add --agent-namespace and --agent-service-account"},
		{"kubeconfig missing", with(base, with(tokenFlags, "--kubeconfig=/nonexistent/kubeconfig")...), "--kubeconfig: stat /nonexistent/kubeconfig"},
		{"negative qps", with(base, with(tokenFlags, "--kubeconfig-qps=-1")...), "--kubeconfig-qps -1"},
		{"negative burst", with(base, with(tokenFlags, "--kubeconfig-burst=-1")...), "--kubeconfig-burst -1"},
		{"content type", with(base, with(tokenFlags, "--kube-api-content-type=text/plain")...), `--kube-api-content-type "text/plain": allowed are`},
		{"contention without profiling", with(certAuth, "--enable-contention-profiling"), "--enable-contention-profiling needs --enable-profiling"},
		{"lease label", with(leases, "--lease-label=foo"), `--lease-label "foo"`},
		{"lease namespace", with(leases, "--lease-namespace="), "--lease-namespace is empty"},
		{"lease duration", with(leases, "--lease-duration=1500ms"), "--lease-duration 1.5s"},
		{"lease renewal", with(leases, "--lease-renewal-interval=30s"), "--lease-renewal-interval 30s must be positive and shorter than --lease-duration 30s"},
		{"lease gc", with(leases, "--lease-gc-interval=0s"), "--lease-gc-interval 0s"},
		{"server cert with uds", with(certAuth, "--server-cert=x"), "have no use with --uds-name"},
		{"uds with port", with(certAuth, "--server-port=8090"), "--server-port must be 0 when --uds-name is set"},
		{"tcp without certs", []string{"--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca"}, "the TCP frontend needs --server-cert, --server-key and --server-ca-cert"},
		{"xfr channel", with(certAuth, "--xfr-channel-size=0"), "--xfr-channel-size 0: must be greater than 0"},
		{"tls 1.0", with(certAuth, "--tls-min-version=VersionTLS10"), "--tls-min-version VersionTLS10: TLS below 1.2 is not offered"},
		{"strategies", with(certAuth, "--proxy-strategies=destHost,nope"), `--proxy-strategies: unknown proxy strategy "nope"`},
		{"mode", with(certAuth, "--mode=socks"), `--mode "socks"`},
		{"negative dial timeout", with(certAuth, "--backend-dial-timeout=-1s"), "--backend-dial-timeout -1s"},
		{"native mux", with(certAuth, "--native-mux=quic"), `--native-mux: native link session layer "quic"`},
		{"unknown flag", with(certAuth, "--count-server-leases"), "unknown flag: --count-server-leases"},
		{"positional", with(certAuth, "extra"), "unexpected arguments"},
		{"not a bool", with(certAuth, "--enable-lease-controller=maybe"), "--enable-lease-controller"},
	} {
		_, err := parse(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestNoAnonymousAgents: without client certificates and tokens the
// server does not start, and says what to add; the opt-out lets it.
func TestNoAnonymousAgents(t *testing.T) {
	base := []string{"--uds-name=/run/k.sock", "--server-port=0", "--cluster-cert=c", "--cluster-key=k"}
	_, err := parse(t, base...)
	if !errors.Is(err, server.ErrNoAgentAuth) {
		t.Fatalf("%v, want ErrNoAgentAuth", err)
	}
	for _, says := range []string{"--cluster-ca-cert", "--agent-namespace", "--agent-service-account", "--authentication-audience", "--allow-unauthenticated-agents"} {
		if !strings.Contains(err.Error(), says) {
			t.Errorf("the refusal does not name %s: %v", says, err)
		}
	}
	c, err := parse(t, with(base, "--allow-unauthenticated-agents")...)
	if err != nil || !c.Config.AllowUnauthenticatedAgents {
		t.Fatalf("opt-out refused: %v", err)
	}
	// The refusal holds at start too, for a Config built in code.
	cfg := c.Config
	cfg.AllowUnauthenticatedAgents = false
	if _, err := server.New(cfg, nil); !errors.Is(err, server.ErrNoAgentAuth) {
		t.Fatalf("server.New: %v, want ErrNoAgentAuth", err)
	}
}

func TestLeaseFlags(t *testing.T) {
	c, err := parse(t, with(certAuth, "--enable-lease-controller", "--lease-namespace=konnectivity",
		"--lease-label=app=k,tier=cp", "--lease-duration=20s", "--lease-renewal-interval=5s", "--lease-gc-interval=7s")...)
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.Config
	if !cfg.EnableLeaseController || cfg.LeaseNamespace != "konnectivity" || cfg.LeaseLabel != "app=k,tier=cp" ||
		cfg.LeaseDuration != 20*time.Second || cfg.LeaseRenewalInterval != 5*time.Second || cfg.LeaseGCInterval != 7*time.Second {
		t.Errorf("lease config %+v", cfg)
	}
}

// TestNativeMux: the session layer of the native link is yamux unless
// --native-mux picks the prototype.
func TestNativeMux(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{certAuth, "yamux"},
		{with(certAuth, "--native-mux=isthmus"), "isthmus"},
	} {
		c, err := parse(t, tc.args...)
		if err != nil || c.Config.NativeMux != tc.want {
			t.Errorf("%q: %v, NativeMux %q; want %q", tc.args, err, c.Config.NativeMux, tc.want)
		}
	}
}

func TestVersionNeedsNothingElse(t *testing.T) {
	c, err := parse(t, "--version")
	if err != nil || !c.Version() {
		t.Fatalf("--version: %v, version %v", err, c.Version())
	}
}

func TestHelpExplains(t *testing.T) {
	var out bytes.Buffer
	_, err := Parse([]string{"--help"}, &out)
	if !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, says := range []string{"--agent-namespace", "TokenReview", "--allow-unauthenticated-agents", "--enable-lease-controller",
		"kubeadm", "--version", "--log-file", "in-cluster"} {
		if !strings.Contains(out.String(), says) {
			t.Errorf("--help does not mention %s", says)
		}
	}
}
