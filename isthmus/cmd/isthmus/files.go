package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"isthmus.dev/certs"
)

// existsError is the refusal of a command to replace files without
// --force: it names every file that exists, and nothing was written.
type existsError struct{ paths []string }

func (e *existsError) Error() string {
	verb, them := "exists", "it"
	if len(e.paths) > 1 {
		verb, them = "exist", "them"
	}
	return fmt.Sprintf("%s already %s: pass --force to replace %s (nothing was written)", strings.Join(e.paths, ", "), verb, them)
}

// Is makes an existsError match fs.ErrExist.
func (e *existsError) Is(target error) bool { return target == fs.ErrExist }

// existing returns the paths that exist (as anything: file, folder, link).
func existing(paths ...string) ([]string, error) {
	var found []string
	for _, p := range paths {
		_, err := os.Lstat(p)
		switch {
		case err == nil:
			found = append(found, p)
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("check %s: %w", p, err)
		}
	}
	return found, nil
}

// refuseExisting returns an *existsError when any of paths exists and
// force is false.
func refuseExisting(force bool, paths ...string) error {
	if force {
		return nil
	}
	found, err := existing(paths...)
	if err != nil {
		return err
	}
	if len(found) > 0 {
		return &existsError{paths: found}
	}
	return nil
}

// writeFiles writes files atomically, creating their folders (mode dirMode),
// and says on e.Stdout what it wrote. Without force, nothing at all is
// written when any of them exists (an *existsError naming each).
func writeFiles(e env, files []certs.File, force bool, dirMode os.FileMode) error {
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.Path
	}
	if err := refuseExisting(force, paths...); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f.Path), dirMode); err != nil {
			return fmt.Errorf("create the folder of %s: %w", f.Path, err)
		}
	}
	if err := certs.WriteFiles(files, force); err != nil {
		var ee *certs.ExistsError
		if errors.As(err, &ee) { // appeared since the check above
			return &existsError{paths: []string{ee.Path}}
		}
		return err
	}
	for _, f := range files {
		fmt.Fprintf(e.Stdout, "wrote %s (mode %04o)\n", abs(f.Path), f.Mode.Perm())
	}
	return nil
}

// abs is p made absolute, for the flags printed: a daemon reads its files
// from its own working directory.
func abs(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
