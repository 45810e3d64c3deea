package flagcompat

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func parseRefused(args ...string) error {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("kept", "", "")
	r := Refused{"kubeconfig": "not yet", "count-server-leases": "not yet either"}
	r.Register(fs, "count-server-leases")
	AddLogging(fs)
	return r.Parse(fs, args)
}

func TestRefusals(t *testing.T) {
	for args, want := range map[string]string{
		"--kubeconfig=/k":       "--kubeconfig: not yet",
		"--count-server-leases": "--count-server-leases: not yet either",
		"positional":            "unexpected arguments",
	} {
		err := parseRefused(args)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", args, err, want)
		}
	}
}

// TestKlogFlagsAccepted: klog's harmless flags, which isthmus once refused,
// are accepted next to refused flags.
func TestKlogFlagsAccepted(t *testing.T) {
	if err := parseRefused("--kept=x", "--vmodule=x=2", "--log-dir=/tmp", "--one_output", "--skip-headers",
		"--log-backtrace-at=f.go:1", "--add-dir-header", "--skip-log-headers", "--log-file-max-size=0",
		"--legacy-stderr-threshold-behavior=false", "--alsologtostderrthreshold=ERROR"); err != nil {
		t.Errorf("harmless klog flags refused: %v", err)
	}
}
