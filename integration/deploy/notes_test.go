package deploy

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"isthmus.dev/integration/harness"
	"isthmus.dev/isthmus/manifests"
)

// renderNotes renders the chart's NOTES.txt with values. helm template
// leaves NOTES.txt out, so a copy of the chart carries it as a ConfigMap.
func renderNotes(t *testing.T, helm, values string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "isthmus")
	copyDir(t, chartDir(t), dir)
	notes, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	tpl := `{{- define "isthmus.notesForTest" -}}` + string(notes) + `{{- end -}}`
	cm := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"isthmus.notesForTest\" . | toJson }}\n"
	for name, data := range map[string]string{"_notes_for_test.tpl": tpl, "notes-for-test.yaml": cm} {
		if err := os.WriteFile(filepath.Join(dir, "templates", name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := harness.Helm(t, helm, "template", "isthmus", dir, "-f", values, "--show-only", "templates/notes-for-test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range decode(t, "NOTES", []byte(out)) {
		return o.(*corev1.ConfigMap).Data["notes"]
	}
	t.Fatal("no NOTES rendered")
	return ""
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// notesCommand is the `isthmus manifests` command line NOTES.txt prints,
// its continued lines joined.
func notesCommand(t *testing.T, notes string) []string {
	t.Helper()
	i := strings.Index(notes, "isthmus manifests")
	if i < 0 {
		t.Fatalf("NOTES print no 'isthmus manifests' command:\n%s", notes)
	}
	var words []string
	for _, line := range strings.Split(notes[i:], "\n") {
		cont := strings.HasSuffix(strings.TrimSpace(line), "\\")
		words = append(words, strings.Fields(strings.TrimSuffix(strings.TrimSpace(line), "\\"))...)
		if !cont {
			break
		}
	}
	return words[1:] // without "isthmus"
}

// TestNotesCommand: the command NOTES.txt tells the operator to run works
// as printed, and renders the very objects the chart installed: its
// control-plane files go with this release.
func TestNotesCommand(t *testing.T) {
	helm := harness.HelmBinary(t)
	for _, s := range cases() {
		// Without the settings of the agents alone, which NOTES leave to
		// the chart (the command's cluster.yaml is not applied).
		s.agentCA, s.hostIPFamily, s.certSecret, s.cpu, s.memory = false, "", "", "", ""
		t.Run(s.name, func(t *testing.T) {
			values := writeValues(t, s.values(""))
			notes := renderNotes(t, helm, values)
			args := notesCommand(t, notes)
			dir := t.TempDir()
			runIsthmus(t, dir, args...)
			b, err := os.ReadFile(filepath.Join(dir, "isthmus-control-plane", manifests.FileCluster))
			if err != nil {
				t.Fatalf("the NOTES command %q wrote no %s: %v", args, manifests.FileCluster, err)
			}
			out, err := harness.Helm(t, helm, "template", "isthmus", chartDir(t), "-f", values)
			if err != nil {
				t.Fatal(err)
			}
			compare(t, "the NOTES command", decode(t, manifests.FileCluster, b), "helm template", decode(t, "helm template", []byte(out)))
			for _, want := range []string{"control-plane/konnectivity-server.yaml", "kubectl -n " + orDefault(s.namespace, "kube-system") + " rollout status daemonset/konnectivity-agent"} {
				if !strings.Contains(notes, want) {
					t.Errorf("NOTES lack %q:\n%s", want, notes)
				}
			}
			if s.auth == "certificates" && !strings.Contains(notes, "create secret tls konnectivity-agent-cert") {
				t.Errorf("NOTES do not say where the agents' certificate goes:\n%s", notes)
			}
		})
	}
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}
