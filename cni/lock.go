package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"isthmus.dev/certs/configfile"
)

// StateFileName is the provider lock's file name inside a manifest
// directory (render's default).
const StateFileName = ".isthmus-cni-state.json"

// DefaultInstallStateFile is install's default provider lock.
const DefaultInstallStateFile = "/var/lib/isthmus/cni-state.json"

// ErrProviderChange is matched (errors.Is) by the error of a refused
// provider change.
var ErrProviderChange = errors.New("pod network provider change refused")

// ProviderChangeError is a refused provider change: the cluster was
// initialised with From, recorded in Path.
type ProviderChangeError struct {
	From, To Provider
	Path     string
}

func (e *ProviderChangeError) Error() string {
	return fmt.Sprintf("the cluster was initialised with pod network provider %q (recorded in %s); changing it to %q "+
		"needs a full cluster redeployment: every node's pod interfaces, routes and IPAM state belong to %s. "+
		"Keep provider %q, or redeploy the cluster and start with a new state file",
		e.From, e.Path, e.To, e.From, e.From)
}

// Is makes a ProviderChangeError match ErrProviderChange.
func (e *ProviderChangeError) Is(target error) bool { return target == ErrProviderChange }

// ProviderLock records the provider of the first successful apply in a
// file, and refuses any other provider afterwards (also after a restart:
// the state is on disk).
type ProviderLock struct {
	Path string
}

type lockState struct {
	Provider   Provider  `json:"provider"`
	RecordedAt time.Time `json:"recordedAt"`
}

// Recorded returns the recorded provider, or "" if none is recorded yet.
func (l ProviderLock) Recorded() (Provider, error) {
	data, err := os.ReadFile(l.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read provider lock: %w", err)
	}
	var st lockState
	if err := configfile.Decode(data, &st); err != nil {
		return "", fmt.Errorf("provider lock %s is damaged (%w): restore it, or remove it only if the cluster has been redeployed", l.Path, err)
	}
	if st.Provider == "" {
		return "", fmt.Errorf("provider lock %s names no provider: restore it, or remove it only if the cluster has been redeployed", l.Path)
	}
	return st.Provider, nil
}

// Check returns a *ProviderChangeError if another provider than p is
// recorded, nil if p is recorded or nothing is.
func (l ProviderLock) Check(p Provider) error {
	rec, err := l.Recorded()
	if err != nil {
		return err
	}
	if rec != "" && rec != p {
		return &ProviderChangeError{From: rec, To: p, Path: l.Path}
	}
	return nil
}

// Record writes p as the cluster's provider if none is recorded yet.
func (l ProviderLock) Record(p Provider) error {
	if err := l.Check(p); err != nil {
		return err
	}
	if rec, _ := l.Recorded(); rec == p {
		return nil
	}
	data, err := json.MarshalIndent(lockState{Provider: p, RecordedAt: time.Now().UTC()}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode provider lock: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(l.Path), 0o755); err != nil {
		return fmt.Errorf("provider lock: %w", err)
	}
	return writeFileAtomic(l.Path, append(data, '\n'), 0o644)
}
