package flagcompat

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func parse(args ...string) (Options, error) {
	var o Options
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("kept", "", "")
	r := Refused{"kubeconfig": "not yet", "count-server-leases": "not yet either"}
	r.Register(fs, "count-server-leases")
	Register(fs, &o)
	return o, r.Parse(fs, args)
}

func TestKlogVerbosityForms(t *testing.T) {
	for _, args := range [][]string{{"-v=4"}, {"--v=4"}, {"-v", "4"}} {
		o, err := parse(args...)
		if err != nil || o.Verbosity != 4 {
			t.Errorf("%v: verbosity %d, %v", args, o.Verbosity, err)
		}
	}
	if _, err := parse("--logtostderr=true", "--alsologtostderr", "--stderrthreshold=1", "--kept=x"); err != nil {
		t.Errorf("accepted klog flags refused: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	for args, want := range map[string]string{
		"--kubeconfig=/k":       "--kubeconfig: not yet",
		"--count-server-leases": "--count-server-leases: not yet either",
		"--vmodule=x=2":         "--vmodule is a klog flag",
		"positional":            "unexpected arguments",
	} {
		_, err := parse(args)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", args, err, want)
		}
	}
}

func TestLogger(t *testing.T) {
	o := Options{LogToStderr: false}
	if _, _, err := o.Logger(); err == nil {
		t.Error("--logtostderr=false without --log-file accepted: logs would go nowhere")
	}
	o = Options{LogFile: t.TempDir() + "/x.log", Verbosity: 3}
	log, closer, err := o.Logger()
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	if !log.Enabled(t.Context(), -4) {
		t.Error("-v=3 must enable debug logs")
	}
}
