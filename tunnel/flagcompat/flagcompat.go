// Package flagcompat keeps the command lines of ANP deployments working:
// klog's own flags (-v, --logtostderr, --log_file or --log-file, ...) with
// klog's meaning on top of log/slog, klog's own output routed into the same
// logger (AddLogging, Logging.Logger), --version (AddVersion, PrintVersion),
// and the refusal, with a reason, of flags isthmus does not support (never
// silently ignored: Refused).
package flagcompat

import (
	"fmt"

	"github.com/spf13/pflag"
)

// Refused are flags accepted by upstream that isthmus refuses when set:
// name -> the reason given to the user.
type Refused map[string]string

// Register adds the refused flags to fs, hidden from --help. Names in
// bools are booleans upstream and work bare (--name).
func (r Refused) Register(fs *pflag.FlagSet, bools ...string) {
	for name, why := range r {
		fs.String(name, "", "not supported yet: "+why)
		_ = fs.MarkHidden(name)
	}
	for _, name := range bools {
		if f := fs.Lookup(name); f != nil {
			f.NoOptDefVal = "true"
		}
	}
}

// Parse parses args into fs, then refuses positional arguments and refused
// flags that were set.
func (r Refused) Parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	for name, why := range r {
		if fs.Changed(name) {
			return fmt.Errorf("--%s: %s", name, why)
		}
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (all options are --flags)", fs.Args())
	}
	return nil
}
