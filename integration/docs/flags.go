package docs

import (
	goflag "flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
	agentoptions "sigs.k8s.io/apiserver-network-proxy/cmd/agent/app/options"
	serveroptions "sigs.k8s.io/apiserver-network-proxy/cmd/server/app/options"

	agentapp "isthmus.dev/proxy-agent/app"
	serverapp "isthmus.dev/proxy-server/app"
)

// How an ANP flag fares in isthmus, or that a flag is isthmus's own.
const (
	StatusSame         = "same"
	StatusOtherDefault = "same, other default"
	StatusNoEffect     = "accepted, no effect"
	StatusRefused      = "refused"
	StatusMissing      = "MISSING" // never in a passing build: a test holds every ANP flag
	StatusNew          = "new"
)

// FlagRow compares one flag of ANP v0.36.0 with isthmus's.
type FlagRow struct {
	Name                   string
	Logging                bool   // one of klog's flags
	ANPDefault, OurDefault string // "" when the side has no such flag
	Status                 string
	Note                   string // isthmus's help, when the status is not "same"
}

// A flag set made twice: a default that differs between the two is random.
type flagSets func() *pflag.FlagSet

// ServerFlags compares proxy-server's command line with ANP's.
func ServerFlags() ([]FlagRow, error) {
	anp := func() *pflag.FlagSet { return withKlog(serveroptions.NewProxyRunOptions().Flags()) }
	ours := func() *pflag.FlagSet {
		c := serverapp.New()
		c.FlagSet().SetOutput(io.Discard)
		return c.FlagSet()
	}
	return compareFlags(anp, ours)
}

// AgentFlags compares proxy-agent's command line with ANP's.
func AgentFlags() ([]FlagRow, error) {
	anp := func() *pflag.FlagSet { return withKlog(agentoptions.NewGrpcProxyAgentOptions().Flags()) }
	ours := func() *pflag.FlagSet {
		fs, _, _ := agentapp.NewFlagSet(io.Discard)
		return fs
	}
	return compareFlags(anp, ours)
}

// withKlog adds klog's flags the way ANP's main does (underscores become
// dashes).
func withKlog(fs *pflag.FlagSet) *pflag.FlagSet {
	local := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(local)
	local.VisitAll(func(f *goflag.Flag) {
		f.Name = strings.ReplaceAll(f.Name, "_", "-")
		fs.AddGoFlag(f)
	})
	return fs
}

func klogNames() map[string]bool {
	names := map[string]bool{}
	withKlog(pflag.NewFlagSet("klog", pflag.ContinueOnError)).VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
	return names
}

func compareFlags(anp, ours flagSets) ([]FlagRow, error) {
	if os.Getenv("PROXY_SERVER_ID") != "" || os.Getenv("PROXY_AGENT_ID") != "" {
		return nil, fmt.Errorf("unset PROXY_SERVER_ID and PROXY_AGENT_ID: they change the defaults shown")
	}
	a, o := defaults(anp), defaults(ours)
	logging := klogNames()
	names := map[string]bool{}
	for n := range a {
		names[n] = true
	}
	for n := range o {
		names[n] = true
	}
	var rows []FlagRow
	for n := range names {
		af, of := a[n], o[n]
		r := FlagRow{Name: n, Logging: logging[n]}
		if af != nil {
			r.ANPDefault = af.def
		}
		if of != nil {
			r.OurDefault = of.def
		}
		r.Status = status(af, of)
		if r.Status == StatusOtherDefault && (sameValue(ours, n, af.raw, of.raw) || sameValue(anp, n, of.raw, af.raw)) {
			r.Status, r.ANPDefault = StatusSame, r.OurDefault // one value, spelled two ways (klog's 2 and ERROR)
		}
		if r.Status != StatusSame && of != nil {
			r.Note = of.usage
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(x, y FlagRow) int { return strings.Compare(x.Name, y.Name) })
	return rows, nil
}

type flagInfo struct {
	def, raw, usage    string
	hidden, deprecated bool
}

// defaults reads a flag set's flags; a default that is not the same in two
// fresh flag sets is "(random)", the host name "(host name)".
func defaults(mk flagSets) map[string]*flagInfo {
	first, second := mk(), mk()
	host, _ := os.Hostname()
	out := map[string]*flagInfo{}
	first.VisitAll(func(f *pflag.Flag) {
		def := f.DefValue
		switch {
		case second.Lookup(f.Name) != nil && second.Lookup(f.Name).DefValue != def:
			def = "(random)"
		case host != "" && def == host:
			def = "(host name)"
		case def == "" || def == "[]":
			def = "(empty)"
		}
		out[f.Name] = &flagInfo{def: def, raw: f.DefValue, usage: f.Usage, hidden: f.Hidden, deprecated: f.Deprecated != ""}
	})
	return out
}

func status(anp, ours *flagInfo) string {
	switch {
	case anp == nil:
		return StatusNew
	case ours == nil:
		return StatusMissing
	case ours.hidden && !ours.deprecated:
		return StatusRefused // flagcompat.Refused: hidden, refused when set
	case ours.deprecated || strings.HasPrefix(ours.usage, "accepted for ANP compatibility"):
		return StatusNoEffect
	case anp.def != ours.def:
		return StatusOtherDefault
	}
	return StatusSame
}

// sameValue reports whether the other side's default, set on a fresh flag
// of mk, reads back as mk's own default.
func sameValue(mk flagSets, name, other, own string) bool {
	fs := mk()
	if err := fs.Set(name, other); err != nil {
		return false
	}
	return fs.Lookup(name).Value.String() == own
}
