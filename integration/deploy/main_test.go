// Package deploy holds the deployment artifacts against each other and
// against the daemons: `isthmus manifests` and the Helm chart
// (deploy/helm/isthmus) render the same cluster objects from the same
// settings, every object decodes strictly with client-go's scheme, the
// chart passes `helm lint --strict` and its schema refuses what it must,
// the command NOTES.txt prints renders the same objects again, and the
// arguments in the manifests parse with proxy-server's and proxy-agent's
// own command lines. helm is built from the Go module proxy once per
// machine (harness.HelmBinary).
package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// isthmusBin is the isthmus command under test, built unstamped: its
// default image is then localhost/isthmus:dev, the chart's appVersion.
var isthmusBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "isthmus-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	isthmusBin = filepath.Join(dir, "isthmus")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	out, err := exec.CommandContext(ctx, "go", "build", "-o", isthmusBin, "isthmus.dev/isthmus/cmd/isthmus").CombinedOutput()
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build isthmus: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: goroutines left after the tests:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
