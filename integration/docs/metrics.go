// Package docs generates the parts of docs/ that must follow the code (the
// metric tables, the flag tables of the migration guide) and holds the
// tests that keep docs/ and README.md true: commands and flags exist,
// links resolve, generated text is current, the quickstart runs.
//
// Regenerate after changing a metric or a flag:
//
//	cd integration && go test ./docs -run TestGeneratedDocs -update
package docs

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metric is one metric as the docs list it.
type Metric struct {
	Name   string
	Type   string   // counter, gauge, histogram, summary or untyped
	Labels []string // variable labels in their order, then constant labels
	Help   string
}

// Metrics lists every metric reg can expose, sorted by name, including
// vectors that have no series yet: their names, help and labels come from
// the descriptors, their type from the collector that owns them.
func Metrics(reg *prometheus.Registry) ([]Metric, error) {
	families, err := reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather: %w", err)
	}
	typeOf := map[string]string{}
	for _, f := range families {
		typeOf[f.GetName()] = strings.ToLower(f.GetType().String())
	}
	byName := map[string]*Metric{}
	for _, d := range describe(reg) {
		p, err := parseDesc(d.String())
		if err != nil {
			return nil, err
		}
		m := byName[p.name]
		if m == nil {
			m = &Metric{Name: p.name, Help: p.help, Type: typeOf[p.name]}
			byName[p.name] = m
		}
		if m.Type == "" {
			if m.Type, err = typeByOwner(reg, d); err != nil {
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
		}
		for _, l := range append(p.variable, p.constant...) {
			if !slices.Contains(m.Labels, l) {
				m.Labels = append(m.Labels, l)
			}
		}
	}
	out := make([]Metric, 0, len(byName))
	for _, m := range byName {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b Metric) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func describe(c prometheus.Collector) []*prometheus.Desc {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	var ds []*prometheus.Desc
	for d := range ch {
		ds = append(ds, d)
	}
	return ds
}

// probe describes one descriptor and collects nothing.
type probe struct{ d *prometheus.Desc }

func (p probe) Describe(ch chan<- *prometheus.Desc) { ch <- p.d }
func (p probe) Collect(chan<- prometheus.Metric)    {}

// typeByOwner finds the type of a metric that has no series yet: a
// registry answers the registration of a collector with the same
// descriptors as a registered one with AlreadyRegisteredError, which
// names the registered collector.
func typeByOwner(reg *prometheus.Registry, d *prometheus.Desc) (string, error) {
	err := reg.Register(probe{d})
	if err == nil {
		reg.Unregister(probe{d})
		return "", errors.New("no collector owns this descriptor alone")
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		return "", fmt.Errorf("no series, and its collector describes more than this metric: %w", err)
	}
	switch are.ExistingCollector.(type) {
	case *prometheus.CounterVec:
		return strings.ToLower(dto.MetricType_COUNTER.String()), nil
	case *prometheus.GaugeVec:
		return strings.ToLower(dto.MetricType_GAUGE.String()), nil
	case *prometheus.HistogramVec:
		return strings.ToLower(dto.MetricType_HISTOGRAM.String()), nil
	case *prometheus.SummaryVec:
		return strings.ToLower(dto.MetricType_SUMMARY.String()), nil
	}
	return "", fmt.Errorf("no series, and its collector is a %T", are.ExistingCollector)
}

type parsedDesc struct {
	name, help         string
	constant, variable []string
}

// parseDesc reads what Desc.String prints:
// Desc{fqName: "n", help: "h", unit: "u", constLabels: {k="v",...}, variableLabels: {a,c(b)}}
func parseDesc(s string) (parsedDesc, error) {
	var p parsedDesc
	rest, ok := strings.CutPrefix(s, "Desc{")
	bad := func(what string) (parsedDesc, error) {
		return parsedDesc{}, fmt.Errorf("descriptor %s: cannot read its %s (has client_golang's Desc.String changed?)", s, what)
	}
	if !ok {
		return bad("start")
	}
	var err error
	if p.name, rest, err = quotedField(rest, "fqName: "); err != nil {
		return bad("name")
	}
	if p.help, rest, err = quotedField(rest, ", help: "); err != nil {
		return bad("help")
	}
	if _, rest, err = quotedField(rest, ", unit: "); err != nil {
		return bad("unit")
	}
	if rest, ok = strings.CutPrefix(rest, ", constLabels: {"); !ok {
		return bad("constant labels")
	}
	for !strings.HasPrefix(rest, "}") {
		name, after, found := strings.Cut(rest, "=")
		if !found {
			return bad("constant labels")
		}
		q, err := strconv.QuotedPrefix(after)
		if err != nil {
			return bad("constant labels")
		}
		p.constant = append(p.constant, name)
		rest = strings.TrimPrefix(after[len(q):], ",")
	}
	list, found := strings.CutPrefix(rest, "}, variableLabels: {")
	if !found || !strings.HasSuffix(list, "}}") {
		return bad("variable labels")
	}
	if list = strings.TrimSuffix(list, "}}"); list != "" {
		for _, l := range strings.Split(list, ",") {
			l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")")
			p.variable = append(p.variable, l)
		}
	}
	return p, nil
}

func quotedField(s, prefix string) (val, rest string, err error) {
	s, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return "", "", errors.New("missing " + prefix)
	}
	q, err := strconv.QuotedPrefix(s)
	if err != nil {
		return "", "", err
	}
	val, err = strconv.Unquote(q)
	return val, s[len(q):], err
}
