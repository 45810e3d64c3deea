package docs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

var bins harness.Binaries

func TestMain(m *testing.M) { harness.Main(m, &bins) }

var isthmusBin harness.Shared[string]

// programs are the binaries the docs name: proxy-server and proxy-agent as
// the harness built them, and isthmus, built here once (-trimpath, as
// make build does: the quickstart test's make build then finds it compiled).
func programs(t *testing.T) map[string]string {
	t.Helper()
	isthmus := isthmusBin.Get(t, func(tb testing.TB) string {
		out := filepath.Join(tb.TempDir(), "isthmus")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if b, err := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "isthmus.dev/isthmus/cmd/isthmus").CombinedOutput(); err != nil {
			tb.Fatalf("go build isthmus: %v\n%s", err, b)
		}
		return out
	})
	return map[string]string{"isthmus": isthmus, "proxy-server": bins.ProxyServer, "proxy-agent": bins.ProxyAgent}
}

// repoRoot is the checkout this package lives in.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Fatalf("%s is not the repository root: %v", root, err)
	}
	return root
}

// docFiles are README.md and every docs/*.md, relative to the root.
func docFiles(t testing.TB) []string {
	t.Helper()
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := []string{"README.md"}
	for _, f := range files {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rel)
	}
	sort.Strings(out[1:])
	return out
}

func readDoc(t testing.TB, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
