package docs

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

// Generated sections sit between these lines; the test rewrites what is
// between them with -update.
const (
	beginMark = "<!-- BEGIN GENERATED %s: cd integration && go test ./docs -run TestGeneratedDocs -update -->"
	endMark   = "<!-- END GENERATED %s -->"
)

// Section returns the text between the markers of section name.
func Section(doc, name string) (string, error) {
	_, body, _, err := cut(doc, name)
	return body, err
}

// Splice returns doc with section name's text replaced by body.
func Splice(doc, name, body string) (string, error) {
	before, _, after, err := cut(doc, name)
	if err != nil {
		return "", err
	}
	return before + "\n" + body + "\n" + after, nil
}

func cut(doc, name string) (before, body, after string, err error) {
	begin, end := fmt.Sprintf(beginMark, name), fmt.Sprintf(endMark, name)
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i < 0 || j < i {
		return "", "", "", fmt.Errorf("no generated section %q: the file needs the lines\n%s\n%s", name, begin, end)
	}
	i += len(begin)
	return doc[:i], strings.Trim(doc[i:j], "\n"), doc[j:], nil
}

// Block is a fenced code block.
type Block struct {
	Lang  string
	Line  int // of the opening fence, 1-based
	Lines []string
}

// Unit is a stretch of prose read as one context: a paragraph, a list
// item, a table row or a heading.
type Unit struct {
	Line int
	Text string
}

// Doc is a Markdown file, split the way the docs tests read it.
type Doc struct {
	Blocks   []Block
	Units    []Unit
	Headings []string
	// Generated is true for Blocks and Units inside generated sections,
	// indexed like them.
	BlockGenerated, UnitGenerated []bool
}

var fence = regexp.MustCompile("^\\s*(```+|~~~+)\\s*([\\w-]*)")

// Parse splits a Markdown document.
func Parse(text string) *Doc {
	d := &Doc{}
	lines := strings.Split(text, "\n")
	var unit *Unit
	generated := false
	flush := func() {
		if unit != nil {
			d.Units = append(d.Units, *unit)
			d.UnitGenerated = append(d.UnitGenerated, generated)
			unit = nil
		}
	}
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		switch {
		case strings.HasPrefix(line, "<!-- BEGIN GENERATED"):
			flush()
			generated = true
			continue
		case strings.HasPrefix(line, "<!-- END GENERATED"):
			flush()
			generated = false
			continue
		}
		if m := fence.FindStringSubmatch(line); m != nil {
			flush()
			b := Block{Lang: m[2], Line: i + 1}
			for i++; i < len(lines) && !strings.HasPrefix(strings.TrimSpace(lines[i]), m[1]); i++ {
				b.Lines = append(b.Lines, lines[i])
			}
			d.Blocks = append(d.Blocks, b)
			d.BlockGenerated = append(d.BlockGenerated, generated)
			continue
		}
		trimmed := strings.TrimSpace(line)
		if trimmed == "" {
			flush()
			continue
		}
		if strings.HasPrefix(trimmed, "#") {
			flush()
			d.Headings = append(d.Headings, strings.TrimSpace(strings.TrimLeft(trimmed, "#")))
		}
		if unit == nil || startsUnit(trimmed) {
			flush()
			unit = &Unit{Line: i + 1, Text: trimmed}
			continue
		}
		unit.Text += " " + trimmed
	}
	flush()
	return d
}

var listItem = regexp.MustCompile(`^([-*+]|\d+\.)\s`)

func startsUnit(line string) bool {
	return strings.HasPrefix(line, "|") || strings.HasPrefix(line, "#") || listItem.MatchString(line)
}

// Anchors are the link targets of a document's headings, as GitHub makes
// them: lower case, punctuation dropped, spaces to dashes, and -1, -2, ...
// for repeats. Explicit <a id="..."> anchors count too.
func Anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	for _, h := range Parse(text).Headings {
		slug := Slug(h)
		if n := seen[slug]; n > 0 {
			out[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	for _, m := range explicitAnchor.FindAllStringSubmatch(text, -1) {
		out[m[1]] = true
	}
	return out
}

var explicitAnchor = regexp.MustCompile(`<a (?:id|name)="([^"]+)"`)

// Slug is GitHub's anchor for a heading.
func Slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

var (
	codeSpan = regexp.MustCompile("``([^`]+)``|`([^`]+)`")
	mdLink   = regexp.MustCompile(`\[([^\]]*)\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
)

// CodeSpans are the inline code spans of a unit, in order.
func CodeSpans(text string) []string {
	var out []string
	for _, m := range codeSpan.FindAllStringSubmatch(text, -1) {
		out = append(out, strings.TrimSpace(m[1]+m[2]))
	}
	return out
}

// Links are the targets of the Markdown links of a unit (not those shown
// inside code spans).
func Links(text string) []string {
	var out []string
	for _, m := range mdLink.FindAllStringSubmatch(codeSpan.ReplaceAllString(text, ""), -1) {
		out = append(out, m[2])
	}
	return out
}
