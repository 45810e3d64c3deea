package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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
	// Log receives one line per file written. Nil: slog.Default().
	Log *slog.Logger
}

// Rendered says what Render wrote.
type Rendered struct {
	Conflist string   // path of the conflist; empty for custom
	Stacks   []string // paths of the stack folders
}

// Render validates c, checks the provider lock, and writes the conflist to
// out/cni/ and each stack to out/manifests/<stack>/ (each folder replaced
// as a whole, atomically), then records the provider. Everything is
// rendered and checked in memory before the first write. Provider custom
// writes no conflist and no manifests: the folders are the user's.
func Render(c Config, out string, o RenderOptions) (Rendered, error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
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
		return Rendered{}, lock.Record(c.Provider)
	}
	conf, err := c.Conflist(o.Node)
	if err != nil {
		return Rendered{}, err
	}
	stacks, err := c.Stacks()
	if err != nil {
		return Rendered{}, err
	}
	encoded := make([]map[string][]byte, len(stacks))
	for i, s := range stacks {
		encoded[i] = map[string][]byte{}
		for _, f := range s.Files {
			data, err := f.Encode()
			if err != nil {
				return Rendered{}, fmt.Errorf("stack %s: %w", s.Name, err)
			}
			encoded[i][f.Name] = data
		}
	}
	var r Rendered
	for _, dir := range []string{filepath.Join(out, ConflistDir), filepath.Join(out, ManifestsDir)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return Rendered{}, fmt.Errorf("render: %w", err)
		}
	}
	r.Conflist = filepath.Join(out, ConflistDir, conf.FileName)
	if err := writeFileAtomic(r.Conflist, conf.Bytes, 0o644); err != nil {
		return Rendered{}, err
	}
	log.Info("wrote CNI conflist", "path", r.Conflist)
	for i, s := range stacks {
		dir := filepath.Join(out, ManifestsDir, s.Name)
		if err := replaceDirAtomic(out, dir, encoded[i]); err != nil {
			return Rendered{}, err
		}
		log.Info("wrote manifest stack", "path", dir, "files", len(encoded[i]))
		r.Stacks = append(r.Stacks, dir)
	}
	return r, lock.Record(c.Provider)
}

// InstallOptions tune Install.
type InstallOptions struct {
	Node      NodeOptions
	StateFile string // provider lock; empty: DefaultInstallStateFile
	Log       *slog.Logger
}

// Install validates c, checks the provider lock and writes the node's
// conflist into confDir (the runtime's CNI config directory, e.g.
// /etc/cni/net.d) atomically, then records the provider. It returns the
// path written. Provider custom installs nothing (ErrCustomProvider).
func Install(c Config, confDir string, o InstallOptions) (string, error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
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
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return "", fmt.Errorf("install: %w", err)
	}
	path := filepath.Join(confDir, conf.FileName)
	if err := writeFileAtomic(path, conf.Bytes, 0o644); err != nil {
		return "", err
	}
	log.Info("installed CNI conflist", "path", path, "provider", c.Provider)
	return path, lock.Record(c.Provider)
}
