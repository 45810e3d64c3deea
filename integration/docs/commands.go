package docs

import (
	"path"
	"regexp"
	"strconv"
	"strings"
)

// Programs are the binaries whose command lines the docs test checks.
var Programs = []string{"isthmus", "proxy-server", "proxy-agent"}

// Invocation is one of Programs on a command line shown in the docs.
type Invocation struct {
	Program string
	Words   []string // the words after the program that are not flags, in order
	Flags   []string // flag names, without dashes or value: "mode", "v"
	Where   string   // file:line
}

func program(word string) string {
	word = strings.Trim(word, `"'`)
	word = strings.TrimPrefix(word, "ExecStart=")
	base := path.Base(word)
	for _, p := range Programs {
		if base == p {
			return p
		}
	}
	return ""
}

// flagName is the name of a flag word ("--mode=grpc" -> "mode"), or "".
func flagName(word string) string {
	word = strings.Trim(word, `"'`)
	if !strings.HasPrefix(word, "-") || word == "-" || word == "--" {
		return ""
	}
	name := strings.TrimLeft(word, "-")
	name, _, _ = strings.Cut(name, "=")
	return name
}

// invocation reads words (a command and its arguments) as a call of one
// of Programs, skipping environment assignments and wrappers in front.
func invocation(words []string, where string) (Invocation, bool) {
	for len(words) > 0 && (assignment.MatchString(words[0]) || wrappers[words[0]]) {
		words = words[1:]
	}
	if len(words) == 0 {
		return Invocation{}, false
	}
	p := program(words[0])
	if p == "" {
		return Invocation{}, false
	}
	inv := Invocation{Program: p, Where: where}
	for _, w := range words[1:] {
		if n := flagName(w); n != "" {
			inv.Flags = append(inv.Flags, n)
		} else {
			inv.Words = append(inv.Words, strings.Trim(w, `"'`))
		}
	}
	return inv, true
}

var (
	assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	wrappers   = map[string]bool{"sudo": true, "exec": true, "env": true, "time": true, "nohup": true, "command": true}
)

// shellSegments splits a shell command line into its simple commands'
// words: quotes are kept together, a comment is dropped, and | & ; ( )
// < > and $( end a command.
func shellSegments(line string) [][]string {
	var segs [][]string
	var words []string
	var word strings.Builder
	inWord := false
	endWord := func() {
		if inWord {
			words = append(words, word.String())
			word.Reset()
			inWord = false
		}
	}
	endSeg := func() {
		endWord()
		if len(words) > 0 {
			segs = append(segs, words)
			words = nil
		}
	}
	var quote rune
	for _, r := range line {
		switch {
		case quote != 0:
			word.WriteRune(r)
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
			word.WriteRune(r)
			inWord = true
		case r == '#' && !inWord:
			endSeg()
			return segs
		case r == ' ' || r == '\t':
			endWord()
		case strings.ContainsRune("|&;()<>`", r):
			endSeg()
		case r == '$':
			word.WriteRune(r)
			inWord = true
		default:
			word.WriteRune(r)
			inWord = true
		}
	}
	endSeg()
	// "$(" leaves a lone "$" word ending the segment before it.
	for i, s := range segs {
		if n := len(s); n > 0 && s[n-1] == "$" {
			segs[i] = s[:n-1]
		}
	}
	return segs
}

// logicalLines joins lines continued with a backslash; first[i] is the
// index in lines where logical line i starts.
func logicalLines(lines []string) (out []string, first []int) {
	var cur strings.Builder
	start := 0
	for i, l := range lines {
		if cur.Len() == 0 {
			start = i
		}
		if t, ok := strings.CutSuffix(strings.TrimRight(l, " \t"), `\`); ok {
			cur.WriteString(t + " ")
			continue
		}
		cur.WriteString(l)
		out, first = append(out, cur.String()), append(first, start)
		cur.Reset()
	}
	if cur.Len() > 0 {
		out, first = append(out, cur.String()), append(first, start)
	}
	return out, first
}

// substitution is a $(...) without nested parentheses.
var substitution = regexp.MustCompile(`\$\(([^()]*)\)`)

var (
	// A YAML list item holding a flag: "- --mode=grpc", - "--v=2".
	yamlFlag = regexp.MustCompile(`^\s*-\s+["']?(--?[A-Za-z][\w-]*)`)
	// A program named as a YAML or JSON scalar: command: ["/proxy-agent"].
	yamlProgram = regexp.MustCompile(`(?:^|[\s"'\[,])/?(?:[\w.-]+/)*(proxy-agent|proxy-server|isthmus)(?:["'\],]|\s*$)`)
)

// BlockInvocations finds the calls of Programs in a code block: shell
// command lines (prompts, comments and continuations understood), a
// systemd ExecStart, and YAML argument lists that follow a program.
func BlockInvocations(b Block, file string) []Invocation {
	if b.Lang == "text" || b.Lang == "mermaid" {
		return nil // output and diagrams, not command lines
	}
	yaml := b.Lang == "yaml" || b.Lang == "yml" || b.Lang == "json"
	var out []Invocation
	last := -1 // index in out of the last program seen, for YAML args
	lines, first := logicalLines(b.Lines)
	for i, line := range lines {
		where := file + ":" + strconv.Itoa(b.Line+1+first[i])
		if yaml {
			if m := yamlFlag.FindStringSubmatch(line); m != nil && last >= 0 {
				out[last].Flags = append(out[last].Flags, flagName(m[1]))
				continue
			}
			if m := yamlProgram.FindStringSubmatch(line); m != nil {
				out = append(out, Invocation{Program: m[1], Where: where})
				last = len(out) - 1
			}
			continue
		}
		line = strings.TrimPrefix(strings.TrimSpace(line), "$ ")
		// A command substitution is a command of its own, quoted or not.
		parts := []string{substitution.ReplaceAllString(line, "X")}
		for _, m := range substitution.FindAllStringSubmatch(line, -1) {
			parts = append(parts, m[1])
		}
		for _, part := range parts {
			for _, words := range shellSegments(part) {
				if inv, ok := invocation(words, where); ok {
					out = append(out, inv)
				}
			}
		}
	}
	return out
}

// SpanInvocation reads an inline code span that starts with one of
// Programs (its words are not split at shell operators: a span such as
// `--link=auto|native|anp` shows alternatives).
func SpanInvocation(span, where string) (Invocation, bool) {
	return invocation(strings.Fields(span), where)
}
