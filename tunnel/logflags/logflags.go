// Package logflags gives isthmus binaries the klog flags that ANP
// deployments pass (-v, --logtostderr, --log-file, ...) with the same
// meaning, on top of log/slog. Flags klog has that we do not support are
// refused with a clear message rather than silently ignored.
package logflags

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
