package integration

import (
	goflag "flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
	agentoptions "sigs.k8s.io/apiserver-network-proxy/cmd/agent/app/options"
	serveroptions "sigs.k8s.io/apiserver-network-proxy/cmd/server/app/options"

	"isthmus.dev/integration/harness"
	agentapp "isthmus.dev/proxy-agent/app"
	serverapp "isthmus.dev/proxy-server/app"
)

// anpFlags lists every flag of an ANP command line with the value to pass
// at its default: "--name=default".
func anpFlags(t *testing.T, fs *pflag.FlagSet) []string {
	t.Helper()
	var args []string
	fs.VisitAll(func(f *pflag.Flag) {
		def := f.DefValue
		if strings.HasSuffix(f.Value.Type(), "Slice") && def == "[]" {
			def = "" // an empty list, as a command line spells it
		}
		args = append(args, "--"+f.Name+"="+def)
	})
	return args
}

// withKlog adds klog's flags the way ANP's main does.
func withKlog(fs *pflag.FlagSet) *pflag.FlagSet {
	local := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(local)
	local.VisitAll(func(f *goflag.Flag) {
		f.Name = strings.ReplaceAll(f.Name, "_", "-")
		fs.AddGoFlag(f)
	})
	return fs
}

// base is a command line flags are held on.
type base struct {
	name string
	args []string
	// byDesign: flags (at their default) that isthmus refuses on this
	// base on purpose, with what its error must say.
	byDesign map[string]string
}

// checkEveryFlag holds every flag of ANP's command line, at its default
// value, against ours: on each base command line where ANP accepts the flag
// at its default, ours must accept it too (or refuse it by design, saying
// why). A flag ANP refuses on every base (one half of a pair the base needs
// whole, say) is logged.
func checkEveryFlag(t *testing.T, anp func() (*pflag.FlagSet, func() error), ours func(args []string) error, bases ...base) {
	t.Helper()
	fs, _ := anp()
	flags := anpFlags(t, fs)
	checked := 0
	for _, flag := range flags {
		var refusals []string
		held := false
		for _, b := range bases {
			args := append(append([]string{}, b.args...), flag)
			afs, validate := anp()
			if err := afs.Parse(args); err != nil {
				refusals = append(refusals, err.Error())
				continue
			}
			if err := validate(); err != nil {
				refusals = append(refusals, err.Error())
				continue
			}
			held = true
			err := ours(args)
			switch why, designed := b.byDesign[flag]; {
			case designed && (err == nil || !strings.Contains(err.Error(), why)):
				t.Errorf("%s on the %s base: %v; isthmus refuses it by design and must say %q", flag, b.name, err, why)
			case !designed && err != nil:
				t.Errorf("%s is accepted by ANP v0.36.0 at its default, refused by isthmus on the %s base: %v", flag, b.name, err)
			}
		}
		if held {
			checked++
		} else {
			t.Logf("%s: ANP itself refuses it on every base (%s); not held against isthmus", flag, strings.Join(refusals, "; "))
		}
	}
	if checked < len(flags)*9/10 {
		t.Fatalf("only %d of ANP's %d flags could be checked: the base command lines are wrong", checked, len(flags))
	}
	t.Logf("%d of ANP's %d flags accepted at their default value", checked, len(flags))
}

func TestEveryANPAgentFlagAcceptedAtItsDefault(t *testing.T) {
	anp := func() (*pflag.FlagSet, func() error) {
		o := agentoptions.NewGrpcProxyAgentOptions()
		return withKlog(o.Flags()), o.Validate
	}
	ours := func(args []string) error {
		_, err := agentapp.Parse(args, io.Discard)
		return err
	}
	checkEveryFlag(t, anp, ours, base{name: "empty"})
}

// The server's flags are held on kubeadm's command line (agents
// authenticated by service-account tokens), with a TCP frontend (ANP's
// default: port 8090, client certificates) and on a Unix socket, and on a
// command line authenticating agents by client certificates. (Client certificates for agents
// would not do as the base: ANP refuses --cluster-ca-cert together with
// token authentication, and isthmus refuses a server that authenticates
// agents neither way, which the default --cluster-ca-cert= would make of
// a base without tokens.)
func TestEveryANPServerFlagAcceptedAtItsDefault(t *testing.T) {
	pki := harness.NewPKI(t)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	agentPort := []string{"--cluster-cert=" + pki.AgentPortCert, "--cluster-key=" + pki.AgentPortKey}
	tokens := append([]string{"--agent-namespace=kube-system", "--agent-service-account=konnectivity-agent",
		"--authentication-audience=system:konnectivity-server", "--kubeconfig=" + kubeconfig}, agentPort...)
	tcp := []string{"--server-cert=" + pki.FrontendCert, "--server-key=" + pki.FrontendKey, "--server-ca-cert=" + pki.CACert}
	uds := []string{"--uds-name=" + filepath.Join(t.TempDir(), "s.sock"), "--server-port=0"}
	bases := []base{
		{name: "tcp, tokens", args: append(append([]string{}, tcp...), tokens...)},
		{name: "uds, tokens", args: append(append([]string{}, uds...), tokens...)},
		{name: "uds, client certificates", args: append(append(append([]string{}, uds...), agentPort...), "--cluster-ca-cert="+pki.CACert),
			// The default empties the only agent authentication: isthmus
			// never serves anonymous agents unless told to.
			byDesign: map[string]string{"--cluster-ca-cert=": "--allow-unauthenticated-agents"}},
	}
	anp := func() (*pflag.FlagSet, func() error) {
		o := serveroptions.NewProxyRunOptions()
		return withKlog(o.Flags()), o.Validate
	}
	ours := func(args []string) error {
		_, err := serverapp.Parse(args, io.Discard)
		return err
	}
	checkEveryFlag(t, anp, ours, bases...)
}
