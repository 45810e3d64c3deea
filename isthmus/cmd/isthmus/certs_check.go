package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"isthmus.dev/certs"
	"isthmus.dev/certs/kubeconfig"
)

const checkUsage = `isthmus certs check FILE... | --dir DIR [--warn-within 720h]

Reports, for every certificate, when it expires and how long is left:
the files given, or else every *.crt, *.pem, *.kubeconfig and *.conf in
--dir (kubeconfigs: the certificates they embed or name). Writes nothing.
Exit status: 0 when all are valid beyond --warn-within; 1 when any has
expired, is not yet valid, or expires within --warn-within, or when a file
cannot be read; 2 on a usage error.
`

func runCertsCheck(e env, args []string) error {
	fs := newFlagSet(e, "isthmus certs check", checkUsage)
	dir := fs.String("dir", "", "directory whose certificates to check, e.g. pki (when no FILE is given)")
	warn := fs.Duration("warn-within", 720*time.Hour, "flag certificates that expire within this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *warn < 0 {
		return usageErrorf("--warn-within %v: must not be negative (0 flags only the expired)", *warn)
	}
	files := fs.Args()
	switch {
	case len(files) > 0 && *dir != "":
		return usageErrorf("give FILE arguments or --dir, not both")
	case len(files) == 0 && *dir == "":
		return required("FILE or --dir DIR", "the certificates or kubeconfigs to check, or the directory holding them")
	case len(files) == 0:
		var err error
		if files, err = certFiles(*dir); err != nil {
			return err
		}
	}
	all, err := checkFiles(files, *warn)
	printStatuses(e, all)
	if err != nil {
		return err
	}
	if w := certs.Worst(all); w != certs.Valid {
		n := 0
		for _, s := range all {
			if s.State != certs.Valid {
				n++
			}
		}
		return fmt.Errorf("%d of %d certificates expired, not yet valid or expiring within %v", n, len(all), *warn)
	}
	return nil
}

// checkFiles checks every file; the error joins those of the files that
// could not be read.
func checkFiles(files []string, warn time.Duration) ([]certs.Status, error) {
	now := time.Now()
	var all []certs.Status
	var errs []error
	for _, f := range files {
		st, err := checkOne(f, now, warn)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, st...)
	}
	return all, errors.Join(errs...)
}

func certFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("--dir: %w", err)
	}
	var files []string
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".crt", ".pem", ".kubeconfig", ".conf":
			if e.Type().IsRegular() || e.Type()&os.ModeSymlink != 0 {
				files = append(files, filepath.Join(dir, e.Name()))
			}
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no *.crt, *.pem, *.kubeconfig or *.conf in %s", dir)
	}
	slices.Sort(files)
	return files, nil
}

func checkOne(path string, now time.Time, warn time.Duration) ([]certs.Status, error) {
	switch filepath.Ext(path) {
	case ".kubeconfig", ".conf":
		srcs, err := kubeconfig.Certificates(path)
		if err != nil {
			return nil, err
		}
		var out []certs.Status
		for _, s := range srcs {
			out = append(out, certs.Check(s.Name, s.Certs, now, warn)...)
		}
		return out, nil
	}
	return certs.CheckFile(path, now, warn)
}

func printStatuses(e env, all []certs.Status) {
	tw := tabwriter.NewWriter(e.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATE\tNOT AFTER\tREMAINING\tSUBJECT\tSOURCE")
	for _, s := range all {
		subject := s.Subject
		if s.IsCA {
			subject += " (CA)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.State, s.NotAfter.UTC().Format(time.RFC3339), remaining(s), subject, s.Source)
	}
	_ = tw.Flush()
}

// remaining is "364d 23h", "5h 12m", or "expired 2d 3h ago".
func remaining(s certs.Status) string {
	if s.State == certs.NotYetValid {
		return "valid from " + s.NotBefore.UTC().Format(time.RFC3339)
	}
	d := s.Remaining
	if d <= 0 {
		return "expired " + days(-d) + " ago"
	}
	return days(d)
}

func days(d time.Duration) string {
	if d >= 24*time.Hour {
		return fmt.Sprintf("%dd %dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	}
	return fmt.Sprintf("%dh %dm", d/time.Hour, d%time.Hour/time.Minute)
}
