package cni

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Output folders under a render directory.
const (
	ConflistDir  = "cni"
	ManifestsDir = "manifests"
)

// RenderOptions tune Render.
type RenderOptions struct {
	// Node fills the per-node values of the conflist; zero: the template
	// the provider completes on each node.
	Node NodeOptions
	// StateFile is the provider lock. Empty: StateFileName in the output
	// directory.
	StateFile string
	// Force replaces the conflist and stack folders that exist. False:
	// when any of them exists, nothing is written (an *ExistsError).
	Force bool
	// Log receives one line per file written. Nil: nothing is logged.
	Log *slog.Logger
}

// Rendered says what Render wrote.
type Rendered struct {
	Conflist string   // path of the conflist; empty for custom
	Stacks   []string // paths of the stack folders
	Files    []string // every file written; the provider lock last, when this render recorded it
}

// ExistsError is a refused render or install: the files or folders in
// Paths exist and Force was not set. Nothing was written.
type ExistsError struct{ Paths []string }

func (e *ExistsError) Error() string {
	verb := "exists"
	if len(e.Paths) > 1 {
		verb = "exist"
	}
	return fmt.Sprintf("%s already %s (nothing was written; force to replace)", strings.Join(e.Paths, ", "), verb)
}

// Is makes an ExistsError match fs.ErrExist.
func (e *ExistsError) Is(target error) bool { return target == fs.ErrExist }

// refuseExisting is an *ExistsError naming the paths that exist, unless
// force.
func refuseExisting(force bool, paths ...string) error {
	if force {
		return nil
	}
	var found []string
	for _, p := range paths {
		_, err := os.Lstat(p)
		switch {
		case err == nil:
			found = append(found, p)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("check %s: %w", p, err)
		}
	}
	if len(found) > 0 {
		return &ExistsError{Paths: found}
	}
	return nil
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// rendering is a render done in memory, before anything is written.
type rendering struct {
	conf   Conflist
	stacks []Stack
	files  []map[string][]byte // per stack: file name to content
}

func renderInMemory(c Config, node NodeOptions) (rendering, error) {
	var r rendering
	var err error
	if r.conf, err = c.Conflist(node); err != nil {
		return r, err
	}
	if r.stacks, err = c.Stacks(); err != nil {
		return r, err
	}
	r.files = make([]map[string][]byte, len(r.stacks))
	for i, s := range r.stacks {
		r.files[i] = map[string][]byte{}
		for _, f := range s.Files {
			data, err := f.Encode()
			if err != nil {
				return r, fmt.Errorf("stack %s: %w", s.Name, err)
			}
			r.files[i][f.Name] = data
		}
	}
	return r, nil
}

// Render validates c, checks the provider lock, and writes the conflist to
// out/cni/ and each stack to out/manifests/<stack>/ (each folder replaced
// as a whole, atomically), then records the provider. Everything is
// rendered and checked in memory before the first write; without
// o.Force nothing is written when the conflist or a stack folder exists.
// Provider custom writes no conflist and no manifests: the folders are the
// user's.
func Render(c Config, out string, o RenderOptions) (Rendered, error) {
	log := logger(o.Log)
	if err := c.Validate(); err != nil {
		return Rendered{}, err
	}
	lock := ProviderLock{Path: o.StateFile}
	if lock.Path == "" {
		lock.Path = filepath.Join(out, StateFileName)
	}
	if err := lock.Check(c.Provider); err != nil {
		return Rendered{}, err
	}
	if c.Provider == Custom {
		log.Info("provider custom: no conflist or manifests rendered; the pod network is yours", "dir", out)
		return recordProvider(lock, c.Provider, Rendered{})
	}
	m, err := renderInMemory(c, o.Node)
	if err != nil {
		return Rendered{}, err
	}
	r := Rendered{Conflist: filepath.Join(out, ConflistDir, m.conf.FileName)}
	for _, s := range m.stacks {
		r.Stacks = append(r.Stacks, filepath.Join(out, ManifestsDir, s.Name))
	}
	if err := refuseExisting(o.Force, append([]string{r.Conflist}, r.Stacks...)...); err != nil {
		return Rendered{}, err
	}
	for _, dir := range []string{filepath.Join(out, ConflistDir), filepath.Join(out, ManifestsDir)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return Rendered{}, fmt.Errorf("render: %w", err)
		}
	}
	if err := writeFileAtomic(r.Conflist, m.conf.Bytes, 0o644); err != nil {
		return Rendered{}, err
	}
	log.Info("wrote CNI conflist", "path", r.Conflist)
	r.Files = append(r.Files, r.Conflist)
	for i, dir := range r.Stacks {
		if err := replaceDirAtomic(out, dir, m.files[i]); err != nil {
			return Rendered{}, err
		}
		log.Info("wrote manifest stack", "path", dir, "files", len(m.files[i]))
		for _, f := range slices.Sorted(maps.Keys(m.files[i])) {
			r.Files = append(r.Files, filepath.Join(dir, f))
		}
	}
	return recordProvider(lock, c.Provider, r)
}

// recordProvider records p in lock and, if that wrote the lock (the first
// render), adds it to r.Files.
func recordProvider(lock ProviderLock, p Provider, r Rendered) (Rendered, error) {
	rec, err := lock.Recorded()
	if err != nil {
		return r, err
	}
	if err := lock.Record(p); err != nil {
		return r, err
	}
	if rec == "" {
		r.Files = append(r.Files, lock.Path)
	}
	return r, nil
}

// InstallOptions tune Install.
type InstallOptions struct {
	Node      NodeOptions
	StateFile string // provider lock; empty: DefaultInstallStateFile
	// Force replaces the conflist if it exists. False: an existing
	// conflist is left as it is (an *ExistsError).
	Force bool
	Log   *slog.Logger // nil: nothing is logged
}

// Install validates c, checks the provider lock and writes the node's
// conflist into confDir (the runtime's CNI config directory, e.g.
// /etc/cni/net.d) atomically, then records the provider. It returns the
// path written. Provider custom installs nothing (ErrCustomProvider).
func Install(c Config, confDir string, o InstallOptions) (string, error) {
	log := logger(o.Log)
	if err := c.Validate(); err != nil {
		return "", err
	}
	lock := ProviderLock{Path: o.StateFile}
	if lock.Path == "" {
		lock.Path = DefaultInstallStateFile
	}
	if err := lock.Check(c.Provider); err != nil {
		return "", err
	}
	conf, err := c.Conflist(o.Node)
	if errors.Is(err, ErrCustomProvider) {
		return "", errors.Join(err, lock.Record(c.Provider))
	}
	if err != nil {
		return "", err
	}
	path := filepath.Join(confDir, conf.FileName)
	if err := refuseExisting(o.Force, path); err != nil {
		return "", err
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return "", fmt.Errorf("install: %w", err)
	}
	if err := writeFileAtomic(path, conf.Bytes, 0o644); err != nil {
		return "", err
	}
	log.Info("installed CNI conflist", "path", path, "provider", c.Provider)
	return path, lock.Record(c.Provider)
}
