package flagcompat

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"isthmus.dev/tunnel/buildinfo"
	"k8s.io/klog/v2"
)

// klogNames are the flags klog v2.140.0 defines; ANP passes them through.
var klogNames = []string{"add_dir_header", "alsologtostderr", "alsologtostderrthreshold",
	"legacy_stderr_threshold_behavior", "log_backtrace_at", "log_dir", "log_file",
	"log_file_max_size", "logtostderr", "one_output", "skip_headers", "skip_log_headers",
	"stderrthreshold", "v", "vmodule"}

// newLogging is a daemon's flag set: a flag of its own, a refused flag,
// klog's flags and --log-json; standard error goes to the returned buffer.
func newLogging(t *testing.T, args ...string) (*Logging, *bytes.Buffer, error) {
	t.Helper()
	fs := pflag.NewFlagSet("prog", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("kept", "", "")
	r := Refused{"kubeconfig": "not yet"}
	r.Register(fs)
	l := AddLogging(fs)
	var stderr bytes.Buffer
	l.stderr = &stderr
	return l, &stderr, r.Parse(fs, args)
}

// otherValue is a valid value of the flag's type that differs from its default.
func otherValue(f klogFlag) string {
	switch {
	case f.isBool && f.def == "true":
		return "false"
	case f.isBool:
		return "true"
	}
	switch f.typ {
	case "Level":
		return "4"
	case "severity":
		return "WARNING"
	case "uint64":
		return "10"
	case "moduleSpec":
		return "tunnel*=3"
	case "traceLocation":
		return "server.go:42"
	}
	return "/some/" + f.name
}

func TestEveryKlogFlagInBothSpellings(t *testing.T) {
	var got []string
	for _, f := range klogFlags {
		got = append(got, f.name)
	}
	slices.Sort(got)
	if !slices.Equal(got, klogNames) {
		t.Fatalf("klog's flags are %v, want %v", got, klogNames)
	}
	for _, f := range klogFlags {
		dash := strings.ReplaceAll(f.name, "_", "-")
		for _, spelling := range []string{f.name, dash} {
			want := otherValue(f)
			l, _, err := newLogging(t, "--kept=x", "--"+spelling+"="+want)
			if err != nil {
				t.Errorf("--%s=%s refused: %v", spelling, want, err)
				continue
			}
			if v := l.values[f.name].val; v != want {
				t.Errorf("--%s=%s: value %q", spelling, want, v)
			}
		}
	}
}

func TestVerbosityForms(t *testing.T) {
	for _, args := range [][]string{{"-v=4"}, {"--v=4"}, {"-v", "4"}, {"--v", "4"}} {
		l, _, err := newLogging(t, args...)
		if err != nil || l.str("v") != "4" {
			t.Errorf("%v: v=%q, %v", args, l.str("v"), err)
		}
	}
}

func TestBareBooleansAnywhere(t *testing.T) {
	for _, f := range klogFlags {
		if !f.isBool {
			continue
		}
		dash := strings.ReplaceAll(f.name, "_", "-")
		for _, args := range [][]string{
			{"--" + f.name},
			{"--" + dash, "--kept=x"},
			{"-v=2", "--" + dash, "--log-json"},
			{"--kept", "y", "--" + f.name, "-v", "3"},
		} {
			l, _, err := newLogging(t, args...)
			if err != nil {
				t.Errorf("%v: %v", args, err)
				continue
			}
			if !l.boolean(f.name) {
				t.Errorf("%v: --%s is %q, want true", args, f.name, l.str(f.name))
			}
		}
	}
	l, _, err := newLogging(t, "--logtostderr=false", "--alsologtostderr=false")
	if err != nil || l.boolean("logtostderr") || l.boolean("alsologtostderr") {
		t.Errorf("--logtostderr=false --alsologtostderr=false: %v %v, %v", l.str("logtostderr"), l.str("alsologtostderr"), err)
	}
}

func TestBadValuesNameTheFlag(t *testing.T) {
	for _, args := range [][]string{{"--stderrthreshold=LOUD"}, {"-v=x"},
		{"--logtostderr=maybe"}, {"--log_file_max_size=-1"}, {"--kubeconfig=/k"}} {
		name := strings.ReplaceAll(strings.Split(args[0], "=")[0], "_", "-")
		if _, _, err := newLogging(t, args...); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%v: %v, want an error naming the flag", args, err)
		}
	}
	// klog itself checks these when Logger hands them over.
	for _, args := range [][]string{{"--vmodule=nolevel"}, {"--log_backtrace_at=noline"}} {
		l, _, err := newLogging(t, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		want := "--" + strings.ReplaceAll(strings.Trim(strings.Split(args[0], "=")[0], "-"), "_", "-")
		if _, _, err := l.Logger(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: Logger() %v, want an error naming %s", args, err, want)
		}
	}
	l, _, _ := newLogging(t, "--logtostderr=false", "--log-file="+t.TempDir()+"/no/such/dir/x.log")
	if _, _, err := l.Logger(); err == nil || !strings.Contains(err.Error(), "--log-file") {
		t.Errorf("unwritable --log-file: %v", err)
	}
	t.Cleanup(klog.ClearLogger)
}

func TestHelp(t *testing.T) {
	fs := pflag.NewFlagSet("prog", pflag.ContinueOnError)
	AddLogging(fs)
	help := fs.FlagUsages()
	for _, want := range []string{"-v, --v Level", "--log-file string", "--log-json",
		"--logtostderr[=true|false]", "(default true)", "--stderrthreshold severity", "(default ERROR)",
		"--log-file-max-size uint", "never rotated", "--vmodule moduleSpec"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q:\n%s", want, help)
		}
	}
	for _, line := range strings.Split(help, "\n") {
		for _, harmless := range []string{"--add-dir-header", "--skip-headers", "--skip-log-headers", "--one-output", "--vmodule", "--log-backtrace-at", "--log-file-max-size"} {
			if strings.HasPrefix(strings.TrimSpace(line), harmless+" ") && !strings.Contains(line, "no effect on isthmus's own logs") {
				t.Errorf("%s: help does not say it has no effect: %s", harmless, line)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	fs := pflag.NewFlagSet("prog", pflag.ContinueOnError)
	v := AddVersion(fs)
	if err := fs.Parse([]string{"--version"}); err != nil || !*v {
		t.Fatalf("--version: %v %v", *v, err)
	}
	var out bytes.Buffer
	PrintVersion(&out, "proxy-server")
	if want := "proxy-server " + buildinfo.Get().String() + "\n"; out.String() != want {
		t.Errorf("PrintVersion wrote %q, want %q", out.String(), want)
	}
	if !regexp.MustCompile(`^proxy-server \S+ \(commit \S+, go[^)]+\)\n$`).MatchString(out.String()) {
		t.Errorf("PrintVersion wrote %q, not \"program version (commit c, goV)\"", out.String())
	}
}

// record is one JSON log line.
type record map[string]any

func jsonLines(t *testing.T, s string) []record {
	t.Helper()
	var out []record
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var r record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not a JSON log line: %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

func find(rs []record, msg string) record {
	for _, r := range rs {
		if r["msg"] == msg {
			return r
		}
	}
	return nil
}

func TestKlogOutputGoesThroughSlog(t *testing.T) {
	t.Cleanup(klog.ClearLogger)
	l, stderr, err := newLogging(t, "--log-json", "-v=2")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Logger(); err != nil {
		t.Fatal(err)
	}
	klog.InfoS("klog info", "key", "value", "n", 7)
	klog.ErrorS(errors.New("boom"), "klog error", "pod", "kube-system/x")
	klog.V(2).InfoS("klog v2")
	klog.V(3).InfoS("klog v3")
	klog.Infof("klog printf %d", 5)
	klog.Background().V(1).Info("contextual v1", "k", "v")
	klog.Background().V(4).Info("contextual v4")
	rs := jsonLines(t, stderr.String())

	if r := find(rs, "klog info"); r == nil || r["level"] != "INFO" || r["key"] != "value" || r["n"] != 7.0 {
		t.Errorf("klog.InfoS: %v in %q", r, stderr)
	}
	if r := find(rs, "klog error"); r == nil || r["level"] != "ERROR" || r["err"] != "boom" || r["pod"] != "kube-system/x" {
		t.Errorf("klog.ErrorS: %v in %q", r, stderr)
	}
	if r := find(rs, "klog v2"); r == nil || r["level"] != "INFO" {
		t.Errorf("klog.V(2) at -v=2: %v in %q", r, stderr)
	}
	if r := find(rs, "contextual v1"); r == nil || r["k"] != "v" {
		t.Errorf("klog.Background().V(1) at -v=2: %v in %q", r, stderr)
	}
	if !strings.Contains(stderr.String(), "klog printf 5") {
		t.Errorf("klog.Infof missing: %q", stderr)
	}
	for _, hidden := range []string{"klog v3", "contextual v4"} {
		if strings.Contains(stderr.String(), hidden) {
			t.Errorf("%q logged at -v=2: %q", hidden, stderr)
		}
	}

	l, stderr, _ = newLogging(t, "--log-json", "-v=4")
	if _, _, err := l.Logger(); err != nil {
		t.Fatal(err)
	}
	klog.V(4).InfoS("klog v4", "conn", 12)
	if r := find(jsonLines(t, stderr.String()), "klog v4"); r == nil || r["level"] != "DEBUG" || r["conn"] != 12.0 {
		t.Errorf("klog.V(4) at -v=4: %v in %q", r, stderr)
	}
}

// TestOutputRouting checks where each level goes, as klog's flags say.
func TestOutputRouting(t *testing.T) {
	t.Cleanup(klog.ClearLogger)
	dir := t.TempDir()
	file := filepath.Join(dir, "x.log")
	for _, c := range []struct {
		name           string
		args           []string
		stderr, inFile string // levels, d(ebug) i(nfo) w(arn) e(rror), expected in each
		path           string // the log file, if one is written
	}{
		{"default: stderr only", nil, "iwe", "", ""},
		{"-v=3 adds debug", []string{"-v=3"}, "diwe", "", ""},
		{"--log-file needs --logtostderr=false", []string{"--log-file=" + file}, "iwe", "", ""},
		{"stderr at a threshold", []string{"--legacy-stderr-threshold-behavior=false", "--stderrthreshold=WARNING"}, "we", "", ""},
		{"file only", []string{"--logtostderr=false", "--log_file=" + file, "--stderrthreshold=FATAL"}, "", "iwe", file},
		{"file, errors to stderr (klog's default threshold)", []string{"--logtostderr=false", "--log-file=" + file}, "e", "iwe", file},
		{"file plus stderr", []string{"--logtostderr=false", "--log-file=" + file, "--alsologtostderr", "-v=4"}, "diwe", "diwe", file},
		{"file plus stderr at a threshold", []string{"--logtostderr=false", "--log-file=" + file, "--alsologtostderr", "--alsologtostderrthreshold=WARNING"}, "we", "iwe", file},
		{"--log-dir", []string{"--logtostderr=false", "--log_dir=" + dir, "--stderrthreshold=3"}, "", "iwe", filepath.Join(dir, "prog.log")},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, p := range []string{file, filepath.Join(dir, "prog.log")} {
				_ = os.Remove(p)
			}
			l, stderr, err := newLogging(t, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			log, closer, err := l.Logger()
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("line-d")
			log.Info("line-i")
			log.Warn("line-w")
			log.Error("line-e")
			if err := closer.Close(); err != nil {
				t.Fatal(err)
			}
			checkLevels(t, "stderr", stderr.String(), c.stderr)
			var inFile []byte
			if c.path != "" {
				if inFile, err = os.ReadFile(c.path); err != nil {
					t.Fatalf("log file: %v", err)
				}
			} else if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a log file was written: %v", err)
			}
			checkLevels(t, "file", string(inFile), c.inFile)
		})
	}
}

func checkLevels(t *testing.T, where, out, want string) {
	t.Helper()
	for _, lv := range "diwe" {
		has := strings.Contains(out, "msg=line-"+string(lv))
		if has != strings.ContainsRune(want, lv) {
			t.Errorf("%s: line-%c present=%v, want levels %q; got:\n%s", where, lv, has, want, out)
		}
	}
}

func TestLogFileWithStderrWarns(t *testing.T) {
	t.Cleanup(klog.ClearLogger)
	l, stderr, _ := newLogging(t, "--log-file="+filepath.Join(t.TempDir(), "x.log"))
	if _, _, err := l.Logger(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "add --logtostderr=false") {
		t.Errorf("no warning that --log-file has no effect: %q", stderr)
	}
}
