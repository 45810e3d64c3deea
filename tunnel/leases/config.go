package leases

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
)

// ANP v0.36.0's values (cmd/server/app/server.go), used for zero fields.
const (
	defaultDuration      = 30 * time.Second
	defaultRenewInterval = 15 * time.Second
	defaultGCInterval    = 15 * time.Second

	// namePrefix + server id is the lease's name, as in ANP.
	namePrefix = "konnectivity-proxy-server-"
)

var errNoClient = errors.New("no kube-apiserver client (--kubeconfig, or in-cluster configuration)")

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// Client reaches kube-apiserver. Required.
	Client kubernetes.Interface
	// Namespace holds the leases (--lease-namespace). Required.
	Namespace string
	// Labels are set on the server's lease and select the leases the
	// garbage collector culls (--lease-label, see ParseLabels). Required:
	// without labels the collector would cull every expired lease of the
	// namespace, other components' included.
	Labels map[string]string
	// ServerID holds the lease and names it (--server-id). Required.
	ServerID string
	// Duration is the lease's leaseDurationSeconds (whole seconds);
	// zero means ANP's 30s.
	Duration time.Duration
	// RenewInterval is how often the lease is renewed; it must be shorter
	// than Duration. Zero means ANP's 15s.
	RenewInterval time.Duration
	// GCInterval is how often expired leases are culled; zero means ANP's 15s.
	GCInterval time.Duration
	// Log receives the controller's lines; nil discards them.
	Log *slog.Logger
	// Registerer gets the lease metrics; nil leaves them unexported.
	Registerer prometheus.Registerer
}

// withDefaults returns c with zero fields set to their defaults, or an error
// naming the field (and its flag) that cannot work and how to fix it.
func (c ControllerConfig) withDefaults() (ControllerConfig, error) {
	if c.Client == nil {
		return c, fmt.Errorf("server leases: %w", errNoClient)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&c.Duration, defaultDuration}, {&c.RenewInterval, defaultRenewInterval}, {&c.GCInterval, defaultGCInterval}} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	var errs []error
	if err := checkNamespace(c.Namespace); err != nil {
		errs = append(errs, err)
	}
	if len(c.Labels) == 0 {
		errs = append(errs, errors.New("no lease labels (--lease-label, e.g. k8s-app=konnectivity-server): they select the leases to cull, and without them every expired lease of the namespace would be deleted"))
	}
	for k, v := range c.Labels {
		if err := checkLabel(k, v); err != nil {
			errs = append(errs, fmt.Errorf("lease label (--lease-label): %w", err))
		}
	}
	if c.ServerID == "" {
		errs = append(errs, errors.New("no server id (--server-id): it names and holds the server's lease"))
	} else if msgs := validation.IsDNS1123Subdomain(namePrefix + c.ServerID); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("server id %q (--server-id) makes the lease name %q, which kube-apiserver refuses: %s; use lower-case letters, digits, '-' and '.'",
			c.ServerID, namePrefix+c.ServerID, strings.Join(msgs, "; ")))
	}
	errs = append(errs, c.checkDurations()...)
	if len(errs) > 0 {
		return c, fmt.Errorf("server leases: %w", errors.Join(errs...))
	}
	return c, nil
}

func (c ControllerConfig) checkDurations() []error {
	var errs []error
	if c.Duration < time.Second || c.Duration%time.Second != 0 || c.Duration/time.Second > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("lease duration %v (--lease-duration): a lease's duration is whole seconds, at least 1s", c.Duration))
	}
	if c.RenewInterval < 0 || c.RenewInterval >= c.Duration {
		errs = append(errs, fmt.Errorf("lease renewal interval %v (--lease-renewal-interval) must be positive and shorter than the lease duration %v (--lease-duration), or the lease expires between renewals",
			c.RenewInterval, c.Duration))
	}
	if c.GCInterval < 0 {
		errs = append(errs, fmt.Errorf("lease garbage collection interval %v (--lease-gc-interval) must be positive", c.GCInterval))
	}
	return errs
}

// CounterConfig configures a Counter.
type CounterConfig struct {
	// Client reaches kube-apiserver. Required.
	Client kubernetes.Interface
	// Namespace holds the servers' leases (--lease-namespace). Required.
	Namespace string
	// Selector is a label selector (--lease-label, e.g.
	// k8s-app=konnectivity-server; any kube label selector is accepted, as
	// in ANP). Required: an empty one would count every lease of the
	// namespace.
	Selector string
	// Log receives the counter's lines; nil discards them.
	Log *slog.Logger
	// Registerer gets the lease metrics; nil leaves them unexported.
	Registerer prometheus.Registerer
}

// check returns cfg with defaults, and the selector parsed and normalised,
// or an error naming the field (and its flag) and how to fix it.
func (cfg CounterConfig) check() (CounterConfig, string, error) {
	var errs []error
	if cfg.Client == nil {
		errs = append(errs, errNoClient)
	}
	if err := checkNamespace(cfg.Namespace); err != nil {
		errs = append(errs, err)
	}
	var selector string
	if strings.TrimSpace(cfg.Selector) == "" {
		errs = append(errs, errors.New("no lease selector (--lease-label, e.g. k8s-app=konnectivity-server): it would count every lease of the namespace"))
	} else if sel, err := labels.Parse(cfg.Selector); err != nil {
		errs = append(errs, fmt.Errorf("lease selector %q (--lease-label) is not a label selector: %w", cfg.Selector, err))
	} else if sel.Empty() {
		errs = append(errs, fmt.Errorf("lease selector %q (--lease-label) selects every lease of the namespace: give at least one key=value", cfg.Selector))
	} else {
		selector = sel.String()
	}
	if len(errs) > 0 {
		return cfg, "", fmt.Errorf("server lease counter: %w", errors.Join(errs...))
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return cfg, selector, nil
}

// ParseLabels parses ANP's --lease-label format, "key=value" pairs separated
// by commas (spaces around keys and values are trimmed), into a label set.
// Unlike ANP it also checks each key and value is one kube-apiserver accepts,
// so a bad flag fails at start rather than at the first lease create.
func ParseLabels(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("no labels: want key=value pairs separated by commas, e.g. k8s-app=konnectivity-server")
	}
	out := map[string]string{}
	for pair := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || strings.Contains(v, "=") {
			return nil, fmt.Errorf("label %q: want key=value (pairs separated by commas, e.g. k8s-app=konnectivity-server)", pair)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if err := checkLabel(k, v); err != nil {
			return nil, err
		}
		if old, dup := out[k]; dup && old != v {
			return nil, fmt.Errorf("label key %q given twice, as %q and as %q: keep one", k, old, v)
		}
		out[k] = v
	}
	return out, nil
}

func checkLabel(k, v string) error {
	if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
		return fmt.Errorf("label key %q: %s", k, strings.Join(msgs, "; "))
	}
	if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
		return fmt.Errorf("label %q: value %q: %s", k, v, strings.Join(msgs, "; "))
	}
	return nil
}

func checkNamespace(ns string) error {
	if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
		return fmt.Errorf("lease namespace %q (--lease-namespace) is not a namespace name: %s", ns, strings.Join(msgs, "; "))
	}
	return nil
}
