package cni

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// writeFileAtomic writes data to path through a temporary file in the same
// directory, synced, then renamed over path: a reader sees the old file or
// the new one, never a part. The temporary name starts with a dot and ends
// in ".tmp-N", so a CNI runtime (which reads *.conf, *.conflist, *.json)
// never picks it up.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// replaceDirAtomic makes target hold exactly files (name to content). The
// new folder is built in stagingParent (on the same file system), then
// swapped with target in one renameat2(RENAME_EXCHANGE), so a manifest
// deployer reading target sees the old stack or the new one, never a mix.
// Where the file system cannot exchange, the old folder is moved aside and
// the new one renamed in (a short moment with no folder, never a mix).
func replaceDirAtomic(stagingParent, target string, files map[string][]byte) error {
	if fi, err := os.Lstat(target); err == nil && !fi.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", target)
	}
	staging, err := os.MkdirTemp(stagingParent, ".isthmus-staging-*")
	if err != nil {
		return fmt.Errorf("stage %s: %w", target, err)
	}
	defer os.RemoveAll(staging) // after a swap it holds the old stack
	for name, data := range files {
		if err := writeFileAtomic(filepath.Join(staging, name), data, 0o644); err != nil {
			return err
		}
	}
	if err := os.Chmod(staging, 0o755); err != nil {
		return fmt.Errorf("stage %s: %w", target, err)
	}
	if err := syncDir(staging); err != nil {
		return err
	}
	parent := filepath.Dir(target)
	switch _, err := os.Lstat(target); {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.Rename(staging, target); err != nil {
			return fmt.Errorf("move %s into place: %w", target, err)
		}
		return syncDir(parent)
	case err != nil:
		return fmt.Errorf("stat %s: %w", target, err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, target, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		err = swapByRename(staging, target)
	}
	if err != nil {
		return fmt.Errorf("swap %s into place: %w", target, err)
	}
	return syncDir(parent)
}

// swapByRename moves target aside and staging in; on success staging is
// left holding the old folder, as after an exchange.
func swapByRename(staging, target string) error {
	old := staging + ".old"
	if err := os.Rename(target, old); err != nil {
		return err
	}
	if err := os.Rename(staging, target); err != nil {
		_ = os.Rename(old, target) // put the old stack back
		return err
	}
	return os.Rename(old, staging)
}
