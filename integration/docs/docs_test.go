package docs

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the generated sections of docs/ from the code")

// TestGeneratedDocs holds the generated sections of docs/ (metric tables,
// flag tables) to what the code generates now; -update rewrites them.
func TestGeneratedDocs(t *testing.T) {
	t.Setenv("PROXY_SERVER_ID", "")
	t.Setenv("PROXY_AGENT_ID", "")
	gen, err := Generated()
	if err != nil {
		t.Fatal(err)
	}
	files := make([]string, 0, len(gen))
	for f := range gen {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, file := range files {
		path := filepath.Join(repoRoot(t), file)
		doc := readDoc(t, file)
		names := make([]string, 0, len(gen[file]))
		for n := range gen[file] {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, name := range names {
			want := strings.Trim(gen[file][name], "\n")
			if *update {
				if doc, err = Splice(doc, name, want); err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				continue
			}
			got, err := Section(doc, name)
			if err != nil {
				t.Errorf("%s: %v", file, err)
				continue
			}
			if got != want {
				t.Errorf("%s: the generated section %q differs from what the code generates now: run\n"+
					"  cd integration && go test ./docs -run TestGeneratedDocs -update\nand commit the result. First difference:\n%s",
					file, name, firstDifference(got, want))
			}
		}
		if *update {
			if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("rewrote the generated sections of %s", file)
		}
	}
}

func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("  line %d in the file:      %s\n  line %d from the code:    %s", i+1, gl, i+1, wl)
		}
	}
	return "(none)"
}

// TestDocsLinksResolve: every relative link of README.md and docs/ names
// a file or directory that exists, and its #anchor a heading there.
func TestDocsLinksResolve(t *testing.T) {
	root := repoRoot(t)
	anchors := map[string]map[string]bool{}
	anchorsOf := func(rel string) map[string]bool {
		if a, ok := anchors[rel]; ok {
			return a
		}
		a := Anchors(readDoc(t, rel))
		anchors[rel] = a
		return a
	}
	checked := 0
	for _, file := range docFiles(t) {
		d := Parse(readDoc(t, file))
		for _, u := range d.Units {
			for _, target := range Links(u.Text) {
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				checked++
				where := fmt.Sprintf("%s:%d: link %q", file, u.Line, target)
				p, anchor, _ := strings.Cut(target, "#")
				rel := file
				if p != "" {
					rel = filepath.Join(filepath.Dir(file), p)
					if _, err := os.Stat(filepath.Join(root, rel)); err != nil {
						t.Errorf("%s: %v", where, err)
						continue
					}
				}
				if anchor == "" {
					continue
				}
				if !strings.HasSuffix(rel, ".md") {
					t.Errorf("%s: an anchor into a file that is not Markdown", where)
					continue
				}
				if !anchorsOf(rel)[anchor] {
					t.Errorf("%s: %s has no heading with anchor #%s", where, rel, anchor)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative links found: the Markdown parser is broken")
	}
	t.Logf("%d relative links resolve", checked)
}

// Programs named in prose: a bare flag right after one that is not ours
// is that program's. ("isthmus" in prose is the project more often than
// the tool: it names no command.)
var mention = regexp.MustCompile(`(?:^|[^\w-])(isthmus|proxy-server|proxy-agent|kube-apiserver|kubelet|kubectl|kubeadm|helm|ctr|curl|k0s|etcd|systemctl)(?:[^\w-]|$)`)

// foreign are commands that are not ours, as the first word of a span.
var foreign = map[string]bool{"kube-apiserver": true, "kubelet": true, "kubectl": true, "kubeadm": true, "helm": true,
	"ctr": true, "curl": true, "k0s": true, "etcd": true, "systemctl": true, "make": true, "go": true, "git": true}

// TestDocsCommandsAndFlagsExist: every call of isthmus, proxy-server and
// proxy-agent shown in README.md and docs/ (code blocks, and inline code
// that starts with the program) names commands and flags that their
// --help lists; a flag shown on its own is held to the program named last
// before it in the same paragraph, list item or table row, or to all of
// ours when none is.
func TestDocsCommandsAndFlagsExist(t *testing.T) {
	c := newCLI(programs(t))
	calls, flags := 0, 0
	for _, file := range docFiles(t) {
		d := Parse(readDoc(t, file))
		for i, b := range d.Blocks {
			if d.BlockGenerated[i] {
				continue
			}
			for _, inv := range BlockInvocations(b, file) {
				calls++
				flags += len(inv.Flags)
				if err := c.check(inv); err != nil {
					t.Errorf("%s: %v", inv.Where, err)
				}
			}
		}
		var section scope // what the last heading names
		for i, u := range d.Units {
			if strings.HasPrefix(u.Text, "#") {
				section = scope{}
			}
			if d.UnitGenerated[i] {
				continue
			}
			s, n, f := checkUnit(t, c, u, section, fmt.Sprintf("%s:%d", file, u.Line))
			if strings.HasPrefix(u.Text, "#") {
				section = s
			}
			calls, flags = calls+n, flags+f
		}
	}
	if calls < 20 || flags < 50 {
		t.Fatalf("only %d calls and %d flags found: the parser is broken", calls, flags)
	}
	t.Logf("%d calls of our programs and %d flags shown, all exist", calls, flags)
}

// scope is what a bare flag belongs to: the program or command named last
// (nil: none), or a program that is not ours (theirs).
type scope struct {
	context *Invocation
	theirs  bool
}

// event is, in a paragraph, a code span or a program named in prose.
type event struct {
	at   int
	span string // the code span, or "" for a program named in prose
	prog string
}

// unitEvents lists a paragraph's code spans and the programs its prose
// names, in order.
func unitEvents(text string) []event {
	var events []event
	prose := []byte(text)
	for _, s := range codeSpan.FindAllStringIndex(text, -1) {
		events = append(events, event{at: s[0], span: strings.TrimSpace(strings.Trim(text[s[0]:s[1]], "`"))})
		for i := s[0]; i < s[1]; i++ {
			prose[i] = ' ' // a program named inside code is not prose
		}
	}
	for _, m := range mention.FindAllSubmatchIndex(prose, -1) {
		events = append(events, event{at: m[2], prog: string(prose[m[2]:m[3]])})
	}
	sort.Slice(events, func(i, j int) bool { return events[i].at < events[j].at })
	return events
}

// checkUnit checks the inline code of one paragraph, starting from the
// scope of the heading above it; it returns the scope at its end and how
// many calls and flags it checked.
func checkUnit(t *testing.T, c *cli, u Unit, start scope, where string) (end scope, calls, flags int) {
	t.Helper()
	sc := start
	for _, e := range unitEvents(u.Text) {
		if e.span == "" {
			sc = scope{theirs: program(e.prog) == ""}
			if e.prog != "isthmus" && !sc.theirs {
				sc.context = &Invocation{Program: e.prog}
			}
			continue
		}
		words := strings.Fields(e.span)
		if inv, ok := SpanInvocation(e.span, where); ok {
			calls++
			flags += len(inv.Flags)
			if err := c.check(inv); err != nil {
				t.Errorf("%s: `%s`: %v", where, e.span, err)
			}
			sc = scope{context: &inv}
			continue
		}
		if foreign[words[0]] {
			sc.theirs = true // `kube-apiserver --egress-selector-config-file=...`
			continue
		}
		if flagName(words[0]) == "" || sc.theirs {
			continue
		}
		var names []string // `--provider calico --calico-mode vxlan`: every flag of the span
		for _, w := range words {
			if n := flagName(w); n != "" {
				names = append(names, n)
			}
		}
		flags += len(names)
		checkBareFlags(t, c, sc.context, names, e.span, where)
	}
	return sc, calls, flags
}

// checkBareFlags checks flags shown without their program: against the
// command named last before them, or, if none was, against all of ours.
func checkBareFlags(t *testing.T, c *cli, context *Invocation, names []string, span, where string) {
	t.Helper()
	if context == nil {
		for _, name := range names {
			ok, err := c.anyFlag(name)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Errorf("%s: `%s`: no command of %s has --%s", where, span, strings.Join(Programs, ", "), name)
			}
		}
		return
	}
	inv := *context
	inv.Flags = names
	if err := c.check(inv); err != nil {
		t.Errorf("%s: `%s` (read as %s's, named last before it): %v", where, span, inv.Program, err)
	}
}
