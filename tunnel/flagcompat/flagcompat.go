// Package flagcompat keeps the command lines of ANP deployments working:
// the klog flags they pass (-v, --logtostderr, --log-file, ...) with the
// same meaning on top of log/slog, and the refusal, with a reason, of flags
// isthmus does not support (never silently ignored).
package flagcompat

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/pflag"
)

// Options are the parsed logging flags.
type Options struct {
	Verbosity       int
	LogToStderr     bool
	AlsoLogToStderr bool
	LogFile         string
	StderrThreshold string
	JSON            bool
}

// unsupported are klog flags we refuse when set.
var unsupported = []string{"vmodule", "log-dir", "log-backtrace-at", "add-dir-header", "skip-headers",
	"skip-log-headers", "one-output", "log-file-max-size", "log-flush-frequency"}

// Register adds the logging flags to fs.
func Register(fs *pflag.FlagSet, o *Options) {
	fs.IntVarP(&o.Verbosity, "v", "v", 0, "log verbosity, as klog's -v: 0-2 info, 3 and up adds per-connection debug logs (never per packet)")
	fs.BoolVar(&o.LogToStderr, "logtostderr", true, "log to standard error (klog compatible; the default)")
	fs.BoolVar(&o.AlsoLogToStderr, "alsologtostderr", false, "with --log-file, log to standard error as well")
	fs.StringVar(&o.LogFile, "log-file", "", "also write logs to this file (appended)")
	fs.StringVar(&o.StderrThreshold, "stderrthreshold", "INFO", "klog compatible; isthmus writes every enabled level to standard error")
	fs.BoolVar(&o.JSON, "log-json", false, "log as JSON lines instead of key=value text")
	for _, name := range unsupported {
		fs.String(name, "", "klog flag not supported by isthmus (refused when set)")
		_ = fs.MarkHidden(name)
	}
}

// Check refuses unsupported flags that were set.
func Check(fs *pflag.FlagSet) error {
	for _, name := range unsupported {
		if f := fs.Lookup(name); f != nil && f.Changed {
			return fmt.Errorf("--%s is a klog flag that isthmus does not support; remove it (logging is configured with -v, --log-file and --log-json)", name)
		}
	}
	return nil
}

// Logger builds the logger the options ask for. The returned closer closes
// the log file, if any.
func (o Options) Logger() (*slog.Logger, io.Closer, error) {
	var w io.Writer = os.Stderr
	var closer io.Closer = io.NopCloser(nil)
	if o.LogFile != "" {
		f, err := os.OpenFile(o.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("--log-file: %w", err)
		}
		closer = f
		w = f
		if o.AlsoLogToStderr {
			w = io.MultiWriter(f, os.Stderr)
		}
	} else if !o.LogToStderr {
		return nil, nil, fmt.Errorf("--logtostderr=false needs --log-file: logs must go somewhere")
	}
	level := slog.LevelInfo
	if o.Verbosity >= 3 {
		level = slog.LevelDebug
	}
	ho := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, ho)
	if o.JSON {
		h = slog.NewJSONHandler(w, ho)
	}
	return slog.New(h), closer, nil
}

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

// Parse parses args into fs, then refuses positional arguments, refused
// flags that were set and unsupported klog flags.
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
	return Check(fs)
}
