package docs

import (
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The generator must list a vector that has no series yet, with its type
// and label names, and a constant-label metric once.
func TestMetricsListsVectorsWithoutSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prometheus.NewCounterVec(prometheus.CounterOpts{Name: "a_total", Help: "A, by x."}, []string{"x", "y"}),
		prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "b_seconds", Help: "B."}, []string{"code"}),
		prometheus.NewGauge(prometheus.GaugeOpts{Name: "c", Help: "C.", ConstLabels: prometheus.Labels{"k": "v,w"}}),
	)
	for _, s := range []string{"s1", "s2"} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "d", Help: "D.",
			ConstLabels: prometheus.Labels{"strategy": s}}, func() float64 { return 1 }))
	}
	got, err := Metrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	want := []Metric{
		{Name: "a_total", Type: "counter", Labels: []string{"x", "y"}, Help: "A, by x."},
		{Name: "b_seconds", Type: "histogram", Labels: []string{"code"}, Help: "B."},
		{Name: "c", Type: "gauge", Labels: []string{"k"}, Help: "C."},
		{Name: "d", Type: "gauge", Labels: []string{"strategy"}, Help: "D."},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Metrics:\n got %+v\nwant %+v", got, want)
	}
}

func TestSpliceAndSection(t *testing.T) {
	doc := "# T\n\nintro\n\n" + strings.ReplaceAll(beginMark, "%s", "x") + "\nold\n" + strings.ReplaceAll(endMark, "%s", "x") + "\n\nafter\n"
	out, err := Splice(doc, "x", "new 1\nnew 2")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Section(out, "x"); err != nil || got != "new 1\nnew 2" {
		t.Fatalf("Section after Splice = %q, %v", got, err)
	}
	if !strings.HasSuffix(out, "\n\nafter\n") || !strings.HasPrefix(out, "# T\n\nintro\n\n") {
		t.Fatalf("Splice changed text outside the markers:\n%s", out)
	}
	if _, err := Section(doc, "y"); err == nil {
		t.Fatal("Section of a missing section: no error")
	}
}

func TestSlugAndAnchors(t *testing.T) {
	for in, want := range map[string]string{
		"By hand: the same tunnel, one command at a time": "by-hand-the-same-tunnel-one-command-at-a-time",
		"Check a host: `isthmus preflight`":               "check-a-host-isthmus-preflight",
		`"No agent available"`:                            "no-agent-available",
		"Static Pod or systemd":                           "static-pod-or-systemd",
	} {
		if got := Slug(in); got != want {
			t.Errorf("Slug(%q) = %q, want %q", in, got, want)
		}
	}
	a := Anchors("# A\n\n## Flags\n\n```sh\n# not a heading\n```\n\n## Flags\n")
	for _, k := range []string{"a", "flags", "flags-1"} {
		if !a[k] {
			t.Errorf("anchor %q missing from %v", k, a)
		}
	}
	if a["not-a-heading"] {
		t.Error("a comment in a code block was read as a heading")
	}
}

func TestBlockInvocations(t *testing.T) {
	sh := Block{Lang: "sh", Line: 10, Lines: []string{
		"$ sudo ./bin/proxy-server --mode=grpc \\",
		"    --uds-name /x.sock   # a comment --not-a-flag",
		"kill %1; FOO=1 isthmus certs ca --dir pki && curl -x --proxy-flag",
		`echo "$(proxy-agent --version)" | grep -v x`,
	}}
	got := BlockInvocations(sh, "f.md")
	want := []Invocation{
		{Program: "proxy-server", Words: []string{"/x.sock"}, Flags: []string{"mode", "uds-name"}, Where: "f.md:11"},
		{Program: "isthmus", Words: []string{"certs", "ca", "pki"}, Flags: []string{"dir"}, Where: "f.md:13"},
		{Program: "proxy-agent", Flags: []string{"version"}, Where: "f.md:14"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("shell:\n got %+v\nwant %+v", got, want)
	}
	yaml := Block{Lang: "yaml", Line: 1, Lines: []string{
		"image: localhost/isthmus:v1",
		`command: ["/proxy-agent"]`,
		"args:",
		"- --proxy-server-host=10.0.0.10",
		`- "--v=2"`,
	}}
	got = BlockInvocations(yaml, "f.md")
	want = []Invocation{{Program: "proxy-agent", Flags: []string{"proxy-server-host", "v"}, Where: "f.md:3"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("yaml:\n got %+v\nwant %+v", got, want)
	}
	if got := BlockInvocations(Block{Lang: "text", Lines: []string{"proxy-server --nope"}}, "f.md"); got != nil {
		t.Fatalf("output block read as commands: %+v", got)
	}
}
