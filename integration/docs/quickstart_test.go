package docs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The local part of docs/quickstart.md sits between these lines: its sh
// blocks are run, in order, as one script; its text blocks are the output
// the script must print, line by line in that order ("..." for lines left
// out).
const (
	localBegin = "<!-- quickstart: local part, run by integration/docs TestQuickstartLocal -->"
	localEnd   = "<!-- quickstart: end of the local part -->"
)

// quickstartLocal returns the script and the expected output lines of the
// local part.
func quickstartLocal(doc string) (script string, want []string, err error) {
	_, rest, ok := strings.Cut(doc, localBegin)
	if !ok {
		return "", nil, fmt.Errorf("docs/quickstart.md has no line %q", localBegin)
	}
	part, _, ok := strings.Cut(rest, localEnd)
	if !ok {
		return "", nil, fmt.Errorf("docs/quickstart.md has no line %q", localEnd)
	}
	var b strings.Builder
	for _, blk := range Parse(part).Blocks {
		switch blk.Lang {
		case "sh":
			b.WriteString(strings.Join(blk.Lines, "\n") + "\n")
		case "text":
			for _, l := range blk.Lines {
				if l = strings.TrimSpace(l); l != "" && l != "..." { // "..." marks lines left out
					want = append(want, l)
				}
			}
		}
	}
	if b.Len() == 0 {
		return "", nil, fmt.Errorf("the local part of docs/quickstart.md has no sh block")
	}
	return b.String(), want, nil
}

// freshCopy copies what a clone of this checkout would hold, uncommitted
// changes included (tracked and untracked files that .gitignore does not
// exclude), into a new directory.
func freshCopy(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	dst := filepath.Join(t.TempDir(), "isthmus")
	n := 0
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		fi, err := os.Lstat(filepath.Join(root, rel))
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the working tree, or not a file
		}
		if err := copyFile(filepath.Join(root, rel), filepath.Join(dst, rel), fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
		n++
	}
	t.Logf("copied %d files of the checkout into %s", n, dst)
	return dst
}

func copyFile(src, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

var scriptPort = regexp.MustCompile(`(?:port=|127\.0\.0\.1:)(\d{2,5})\b`)

// isolation is how the script is run: in a network namespace of its own
// (root: its fixed ports cannot meet another test's), or else here, if
// every port it names is free now.
func isolation(t *testing.T, script string) []string {
	t.Helper()
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("unshare"); err == nil {
			if _, err := exec.LookPath("ip"); err == nil {
				return []string{"unshare", "--net", "--", "bash", "-c", `ip link set lo up && exec bash -euo pipefail "$0"`}
			}
		}
	}
	for _, m := range scriptPort.FindAllStringSubmatch(script, -1) {
		ln, err := net.Listen("tcp", "127.0.0.1:"+m[1])
		if err != nil {
			t.Skipf("not root (no network namespace of its own), and port %s, which the quickstart uses, is taken here: %v", m[1], err)
		}
		ln.Close()
	}
	return []string{"bash", "-euo", "pipefail"}
}

// TestQuickstartLocal follows the local part of docs/quickstart.md word
// for word, as a newcomer would, in a fresh copy of this checkout: its
// commands must all succeed and print the output the page shows.
func TestQuickstartLocal(t *testing.T) {
	for _, tool := range []string{"make", "curl", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the quickstart needs %s, which is not installed here", tool)
		}
	}
	script, want, err := quickstartLocal(readDoc(t, "docs/quickstart.md"))
	if err != nil {
		t.Fatal(err)
	}
	dir := freshCopy(t)
	scriptFile := filepath.Join(t.TempDir(), "quickstart.sh")
	if err := os.WriteFile(scriptFile, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file, not a pipe: Wait returns when the script ends even if a
	// daemon it started in the background still runs.
	logFile, err := os.Create(filepath.Join(t.TempDir(), "quickstart.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	argv := append(isolation(t, script), scriptFile)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logFile, logFile
	// mktemp and the demo make their directories in here, removed with it.
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	runErr := cmd.Wait()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // anything it left behind
	output, err := os.ReadFile(logFile.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ran the local part of docs/quickstart.md (%s) in %s", strings.Join(argv[:len(argv)-1], " "), time.Since(start).Round(time.Second))
	if runErr != nil {
		t.Fatalf("the quickstart failed: %v\nscript:\n%s\noutput:\n%s", runErr, script, output)
	}
	rest := output
	for _, line := range want {
		i := bytes.Index(rest, []byte(line))
		if i < 0 {
			t.Fatalf("the quickstart shows the output line %q, which did not come (in this order)\noutput:\n%s", line, output)
		}
		rest = rest[i+len(line):]
	}
	if !bytes.Contains(output, []byte("demo OK")) {
		t.Fatalf("make demo did not say \"demo OK\"\noutput:\n%s", output)
	}
	t.Logf("%d output lines of the page came as shown; the whole output:\n%s", len(want), output)
}

// The README's walkthrough sits between these lines.
const (
	readmeBegin = "<!-- walkthrough: every sh block up to the end marker is one of docs/quickstart.md's local part (integration/docs checks it) -->"
	readmeEnd   = "<!-- walkthrough: end -->"
)

// TestReadmeWalkthroughIsTheQuickstarts: the README's walkthrough shows
// only commands that TestQuickstartLocal runs (each of its sh blocks is a
// block of the quickstart's local part), so it is tested too.
func TestReadmeWalkthroughIsTheQuickstarts(t *testing.T) {
	readme := readDoc(t, "README.md")
	_, rest, ok := strings.Cut(readme, readmeBegin)
	if !ok {
		t.Fatalf("README.md has no line %q", readmeBegin)
	}
	walk, _, ok := strings.Cut(rest, readmeEnd)
	if !ok {
		t.Fatalf("README.md has no line %q", readmeEnd)
	}
	script, _, err := quickstartLocal(readDoc(t, "docs/quickstart.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range Parse(walk).Blocks {
		if b.Lang != "sh" {
			continue
		}
		n++
		if block := strings.Join(b.Lines, "\n") + "\n"; !strings.Contains(script, block) {
			t.Errorf("README.md's walkthrough block at its line %d is not a block of docs/quickstart.md's local part, which the quickstart test runs:\n%s", b.Line, block)
		}
	}
	if n == 0 {
		t.Fatal("the README's walkthrough has no sh block")
	}
	t.Logf("%d blocks of the README's walkthrough are the quickstart's", n)
}
