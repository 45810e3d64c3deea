package flagcompat

import (
	"context"
	"errors"
	"log/slog"
)

// fanout sends each record to every handler that takes its level: one per
// destination (standard error, the log file), each with its own threshold.
type fanout []slog.Handler

func (f fanout) Enabled(ctx context.Context, level slog.Level) bool {
	for _, h := range f {
		if h.Enabled(ctx, level) {
			return true
		}
	}
	return false
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range f {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (f fanout) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(attrs)
	}
	return out
}

func (f fanout) WithGroup(name string) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name)
	}
	return out
}

// klogHandler takes klog's output. klog's V(n) messages arrive (through
// logr) at slog level -n: they are made when n <= -v, as klog decides, and
// come out at INFO for n <= 2 and DEBUG from 3 on, as isthmus's own logs.
type klogHandler struct {
	inner     slog.Handler
	verbosity int
}

func (k *klogHandler) Enabled(ctx context.Context, level slog.Level) bool {
	if level < slog.LevelInfo {
		level = k.level(level)
		if level == levelOff {
			return false
		}
	}
	return k.inner.Enabled(ctx, level)
}

// levelOff marks a V-level above -v.
const levelOff = slog.Level(-1 << 30)

// maxKlogV is the highest klog V-level logged, whatever -v says: from 8
// on client-go logs the bodies of its requests and answers, and a
// TokenReview's hold the token of the agent it reviews. No log may hold a
// secret.
const maxKlogV = 7

func (k *klogHandler) level(l slog.Level) slog.Level {
	switch v := -int(l); {
	case v > k.verbosity, v > maxKlogV:
		return levelOff
	case v >= 3:
		return slog.LevelDebug
	default:
		return slog.LevelInfo
	}
}

func (k *klogHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo {
		if r.Level = k.level(r.Level); r.Level == levelOff {
			return nil
		}
	}
	return k.inner.Handle(ctx, r)
}

func (k *klogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &klogHandler{inner: k.inner.WithAttrs(attrs), verbosity: k.verbosity}
}

func (k *klogHandler) WithGroup(name string) slog.Handler {
	return &klogHandler{inner: k.inner.WithGroup(name), verbosity: k.verbosity}
}
