package docs

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// cell makes s safe inside a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

func code(s string) string { return "`" + s + "`" }

func labelList(ls []string) string {
	if len(ls) == 0 {
		return ""
	}
	cs := make([]string, len(ls))
	for i, l := range ls {
		cs[i] = code(l)
	}
	return strings.Join(cs, ", ")
}

func runtimeMetric(name string) bool {
	return strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_")
}

// MetricsSections is the generated part of docs/metrics.md: one table per
// binary, then the Go runtime and process metrics both binaries share.
func MetricsSections(server, agent []Metric) string {
	shared := map[string]bool{}
	for _, s := range server {
		if !runtimeMetric(s.Name) {
			continue
		}
		if i := slices.IndexFunc(agent, func(a Metric) bool { return a.Name == s.Name }); i >= 0 && reflect.DeepEqual(agent[i], s) {
			shared[s.Name] = true
		}
	}
	var b strings.Builder
	table := func(title, intro string, ms []Metric, keep func(Metric) bool) {
		fmt.Fprintf(&b, "## %s\n\n%s\n\n| metric | type | labels | help |\n|---|---|---|---|\n", title, intro)
		for _, m := range ms {
			if keep(m) {
				fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", code(m.Name), m.Type, labelList(m.Labels), cell(m.Help))
			}
		}
		b.WriteString("\n")
	}
	own := func(m Metric) bool { return !shared[m.Name] }
	table("proxy-server", "At `/metrics` on proxy-server's health and admin ports.", server, own)
	table("proxy-agent", "At `/metrics` on proxy-agent's health and admin ports.", agent, own)
	table("Go runtime and process (both binaries)", "From client_golang's Go and process collectors, registered on each daemon's own registry.",
		server, func(m Metric) bool { return shared[m.Name] })
	return strings.TrimRight(b.String(), "\n")
}

// MetricsComparison is the generated metric table of
// docs/migrating-from-anp.md: every konnectivity_network_proxy_* metric of
// ANP v0.36.0 and of isthmus, side by side.
func MetricsComparison(anp, server, agent []Metric) string {
	type pair struct{ anp, ours *Metric }
	all := map[string]*pair{}
	add := func(ms []Metric, ours bool) {
		for i := range ms {
			m := &ms[i]
			if !strings.HasPrefix(m.Name, "konnectivity_network_proxy_") {
				continue
			}
			p := all[m.Name]
			if p == nil {
				p = &pair{}
				all[m.Name] = p
			}
			if ours {
				p.ours = m
			} else {
				p.anp = m
			}
		}
	}
	add(anp, false)
	add(server, true)
	add(agent, true)
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	slices.Sort(names)
	describe := func(m *Metric) string {
		if m == nil {
			return "—"
		}
		if len(m.Labels) == 0 {
			return m.Type
		}
		return m.Type + " (" + labelList(m.Labels) + ")"
	}
	var b strings.Builder
	b.WriteString("| metric | ANP v0.36.0 | isthmus | in isthmus |\n|---|---|---|---|\n")
	for _, n := range names {
		p := all[n]
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", code(n), describe(p.anp), describe(p.ours), metricStatus(p.anp, p.ours))
	}
	return strings.TrimRight(b.String(), "\n")
}

func metricStatus(anp, ours *Metric) string {
	switch {
	case anp == nil:
		return "new"
	case ours == nil:
		return "not exported"
	case anp.Type != ours.Type:
		return "other type"
	}
	a, o := slices.Clone(anp.Labels), slices.Clone(ours.Labels)
	slices.Sort(a)
	slices.Sort(o)
	if !slices.Equal(a, o) {
		return "other labels"
	}
	return "same"
}

// FlagTable renders flag rows: the ANP flags of one binary (logging false)
// or klog's logging flags (logging true).
func FlagTable(rows []FlagRow, logging bool) string {
	var b strings.Builder
	b.WriteString("| flag | ANP v0.36.0 default | isthmus default | in isthmus | isthmus's help, where not the same |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		if r.Logging != logging {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", code("--"+r.Name), defaultCell(r.ANPDefault), defaultCell(r.OurDefault), r.Status, cell(r.Note))
	}
	return strings.TrimRight(b.String(), "\n")
}

// defaultCell shows a default: a value in code, "(empty)", "(random)" and
// "(host name)" as words, no flag as a dash.
func defaultCell(d string) string {
	switch {
	case d == "":
		return "—"
	case strings.HasPrefix(d, "(") && strings.HasSuffix(d, ")"):
		return "*" + strings.Trim(d, "()") + "*"
	}
	return code(d)
}

// Generated is every generated section, by file (relative to the
// repository root) and section name.
func Generated() (map[string]map[string]string, error) {
	dir, err := os.MkdirTemp("", "isthmus-docs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var server, agent, anp []Metric
	for _, r := range []struct {
		into  *[]Metric
		build func() (*prometheus.Registry, error)
	}{
		{&server, func() (*prometheus.Registry, error) { return ServerRegistry(dir) }},
		{&agent, func() (*prometheus.Registry, error) { return AgentRegistry(dir) }},
		{&anp, ANPRegistry},
	} {
		reg, err := r.build()
		if err != nil {
			return nil, err
		}
		if *r.into, err = Metrics(reg); err != nil {
			return nil, err
		}
	}
	serverFlags, err := ServerFlags()
	if err != nil {
		return nil, err
	}
	agentFlags, err := AgentFlags()
	if err != nil {
		return nil, err
	}
	logging := FlagTable(serverFlags, true)
	if agentLogging := FlagTable(agentFlags, true); agentLogging != logging {
		logging = "proxy-server:\n\n" + logging + "\n\nproxy-agent:\n\n" + agentLogging
	}
	return map[string]map[string]string{
		"docs/metrics.md": {"metrics": MetricsSections(server, agent)},
		"docs/migrating-from-anp.md": {
			"flags-proxy-server": FlagTable(serverFlags, false),
			"flags-proxy-agent":  FlagTable(agentFlags, false),
			"flags-logging":      logging,
			"metrics":            MetricsComparison(anp, server, agent),
		},
	}, nil
}
