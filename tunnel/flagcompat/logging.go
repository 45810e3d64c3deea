package flagcompat

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

// klogFlag is one of klog's own flags as klog defines it.
type klogFlag struct {
	name   string // klog's spelling: log_file
	usage  string
	def    string
	typ    string // pflag's type name for klog's value: bool, string, uint64, Level, severity, ...
	isBool bool
}

// klogFlags are klog's flags, read from klog once at start-up, before any
// Logger call can have changed klog's values (their defaults are the
// current values when klog.InitFlags runs). Read-only after init.
var klogFlags = readKlogFlags()

func readKlogFlags() []klogFlag {
	gfs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(gfs)
	var out []klogFlag
	gfs.VisitAll(func(f *flag.Flag) {
		pf := pflag.PFlagFromGoFlag(f)
		def := f.DefValue
		switch pf.Value.Type() {
		case "traceLocation":
			if def == ":0" {
				def = "" // klog's String of "unset", which its Set refuses
			}
		case "severity": // klog shows a number: name it
			if n, err := strconv.Atoi(def); err == nil && n >= 0 && n < len(severityNames) {
				def = severityNames[n]
			}
		}
		out = append(out, klogFlag{name: f.Name, usage: f.Usage, def: def,
			typ: pf.Value.Type(), isBool: pf.NoOptDefVal == "true"})
	})
	return out
}

// notes complete klog's help text where isthmus's own (slog) output differs
// or needs saying.
var notes = map[string]string{
	"v":                 "; isthmus: 0-2 info, 3 and up adds per-connection debug logs (never per packet); the Kubernetes client's logs stop at 7 (from 8 on they would show request bodies, and a TokenReview's holds an agent's token)",
	"log_file":          " (appended; klog's underscore spellings such as --log_file work too)",
	"log_dir":           "; isthmus writes <program>.log there when --log-file is empty (default: the system temporary directory)",
	"log_file_max_size": " (no effect on isthmus's own logs: never rotated)",
	"add_dir_header":    " (no effect on isthmus's own logs)",
	"skip_headers":      " (no effect on isthmus's own logs)",
	"skip_log_headers":  " (no effect on isthmus's own logs)",
	"one_output":        " (no effect on isthmus's own logs: one file)",
	"vmodule":           " (no effect on isthmus's own logs)",
	"log_backtrace_at":  " (no effect on isthmus's own logs)",
}

// klogValue holds one klog flag's value for one flag set; klog's own
// (process-global) value is only set by Logger.
type klogValue struct {
	f   klogFlag
	val string
}

func (v *klogValue) String() string   { return v.val }
func (v *klogValue) Type() string     { return v.f.typ }
func (v *klogValue) IsBoolFlag() bool { return v.f.isBool }

// Set checks what isthmus reads itself; klog checks the rest when Logger
// hands the values over.
func (v *klogValue) Set(s string) error {
	switch {
	case v.f.isBool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("want true or false")
		}
		s = strconv.FormatBool(b)
	case v.f.typ == "severity":
		if _, err := parseSeverity(s); err != nil {
			return err
		}
	case v.f.typ == "Level":
		var l klog.Level
		if err := l.Set(s); err != nil {
			return fmt.Errorf("want a number: %w", err)
		}
	case v.f.typ == "uint64":
		if _, err := strconv.ParseUint(s, 10, 64); err != nil {
			return fmt.Errorf("want a number of megabytes: %w", err)
		}
	}
	v.val = s
	return nil
}

// Logging are klog's flags and --log-json, parsed for one program.
type Logging struct {
	program string
	values  map[string]*klogValue // by klog's name
	json    bool
	stderr  io.Writer // os.Stderr; tests replace it
}

// wordSepNormalize makes '_' and '-' alike in flag names, as Kubernetes'
// WordSepNormalizeFunc does: --log_file and --log-file are one flag.
func wordSepNormalize(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	return pflag.NormalizedName(strings.ReplaceAll(name, "_", "-"))
}

// AddLogging adds klog's own flags (-v, --logtostderr, --log-file, ...,
// under their dash spelling as ANP registers them) and --log-json to fs, and
// makes fs treat '_' and '-' alike so that klog's underscore spellings work
// too. klog's booleans work bare (--alsologtostderr). The program name for
// --log-dir is fs's name.
func AddLogging(fs *pflag.FlagSet) *Logging {
	fs.SetNormalizeFunc(wordSepNormalize)
	l := &Logging{program: fs.Name(), values: map[string]*klogValue{}, stderr: os.Stderr}
	for _, kf := range klogFlags {
		v := &klogValue{f: kf, val: kf.def}
		l.values[kf.name] = v
		fs.AddGoFlag(&flag.Flag{Name: kf.name, Usage: kf.usage + notes[kf.name], Value: v, DefValue: kf.def})
	}
	fs.BoolVar(&l.json, "log-json", false, "log as JSON lines instead of key=value text")
	return l
}

func (l *Logging) str(name string) string { return l.values[name].val }

func (l *Logging) boolean(name string) bool {
	b, _ := strconv.ParseBool(l.values[name].val)
	return b
}

func (l *Logging) severity(name string) slog.Level {
	s, _ := parseSeverity(l.values[name].val)
	return s
}

// Logger builds the logger klog's flags ask for and routes klog's own
// output (client-go and friends log through klog) into it. It sets klog's
// process-global state: call it once per process, from main. The closer
// closes the log file, if any.
//
// As in klog: with --logtostderr (the default) everything goes to standard
// error (with --legacy-stderr-threshold-behavior=false, only what reaches
// --stderrthreshold); with --logtostderr=false everything goes to
// --log-file (or <program>.log in --log-dir), and to standard error what
// reaches --alsologtostderrthreshold with --alsologtostderr, else what
// reaches --stderrthreshold (ERROR).
func (l *Logging) Logger() (*slog.Logger, io.Closer, error) {
	if err := l.applyToKlog(); err != nil {
		return nil, nil, err
	}
	verbosity, _ := strconv.Atoi(l.str("v"))
	base := slog.LevelInfo
	if verbosity >= 3 {
		base = slog.LevelDebug
	}
	var outs fanout
	closer := closeFunc(func() error { return nil })
	if l.boolean("logtostderr") {
		lowest := base
		if !l.boolean("legacy_stderr_threshold_behavior") {
			lowest = max(base, l.severity("stderrthreshold"))
		}
		outs = append(outs, l.handler(l.stderr, lowest))
	} else {
		f, err := l.openFile()
		if err != nil {
			return nil, nil, err
		}
		closer = f.Close
		outs = append(outs, l.handler(f, base))
		threshold := l.severity("stderrthreshold")
		if l.boolean("alsologtostderr") {
			threshold = l.severity("alsologtostderrthreshold")
		}
		outs = append(outs, l.handler(l.stderr, max(base, threshold)))
	}
	log := slog.New(outs)
	klog.SetSlogLogger(slog.New(&klogHandler{inner: outs, verbosity: verbosity}))
	if l.boolean("logtostderr") && (l.str("log_file") != "" || l.str("log_dir") != "") {
		log.Warn("--log-file and --log-dir have no effect with --logtostderr=true (as in klog): logging to standard error only; add --logtostderr=false to write the file")
	}
	return log, closer, nil
}

// applyToKlog hands every value to klog (klog checks --vmodule and
// --log-backtrace-at itself): klog's own -v and --vmodule then decide
// which of its V-levelled messages are made at all.
func (l *Logging) applyToKlog() error {
	gfs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(gfs)
	for _, kf := range klogFlags {
		if err := gfs.Set(kf.name, l.values[kf.name].val); err != nil {
			return fmt.Errorf("--%s=%s: %w", wordSepNormalize(nil, kf.name), l.values[kf.name].val, err)
		}
	}
	return nil
}

func (l *Logging) openFile() (*os.File, error) {
	name, flagName := l.str("log_file"), "--log-file"
	if name == "" {
		dir := l.str("log_dir")
		if dir == "" {
			dir = os.TempDir()
		}
		program := l.program
		if program == "" {
			program = filepath.Base(os.Args[0])
		}
		name, flagName = filepath.Join(dir, program+".log"), "--log-dir"
	}
	f, err := os.OpenFile(name, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("%s (with --logtostderr=false logs go to a file): %w", flagName, err)
	}
	return f, nil
}

func (l *Logging) handler(w io.Writer, lowest slog.Level) slog.Handler {
	o := &slog.HandlerOptions{Level: lowest}
	if l.json {
		return slog.NewJSONHandler(w, o)
	}
	return slog.NewTextHandler(w, o)
}

type closeFunc func() error

func (c closeFunc) Close() error { return c() }

// levelFatal is klog's FATAL on slog's scale: above every level isthmus logs at.
const levelFatal = slog.LevelError + 4

// severityNames are klog's severities, 0 to 3.
var severityNames = []string{"INFO", "WARNING", "ERROR", "FATAL"}

// parseSeverity reads a klog severity (INFO, WARNING, ERROR, FATAL, any
// case, or klog's numbers 0-3) as the lowest slog level it lets through.
func parseSeverity(s string) (slog.Level, error) {
	n := -1
	for i, name := range severityNames {
		if strings.EqualFold(s, name) {
			n = i
		}
	}
	if n < 0 {
		v, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("want a klog severity: INFO, WARNING, ERROR or FATAL (or 0-3)")
		}
		n = int(v)
	}
	switch {
	case n <= 0:
		return slog.Level(-1 << 20), nil // INFO: every info line, V-levelled (debug) ones included
	case n == 1:
		return slog.LevelWarn, nil
	case n == 2:
		return slog.LevelError, nil
	default:
		return levelFatal, nil
	}
}
