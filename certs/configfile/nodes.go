package configfile

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// maxDepth bounds the walks over a document: deeper nesting is not looked
// into (for a line or a duplicate); the decoders have their own bounds.
const maxDepth = 10000

// duplicates finds every key given twice in one mapping, by its text (so
// `1:` and `"1":`, one key once the YAML is JSON, are duplicates too).
func duplicates(doc *yamlv3.Node) []*KeyError {
	var out []*KeyError
	var walk func(n *yamlv3.Node, path string, depth int)
	walk = func(n *yamlv3.Node, path string, depth int) {
		if n == nil || depth > maxDepth {
			return
		}
		switch n.Kind {
		case yamlv3.DocumentNode:
			for _, c := range n.Content {
				walk(c, path, depth+1)
			}
		case yamlv3.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i), depth+1)
			}
		case yamlv3.MappingNode:
			first := map[string]int{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				if k.Kind != yamlv3.ScalarNode || k.Tag == "!!merge" {
					continue
				}
				p := join2(path, k.Value)
				if line, dup := first[k.Value]; dup {
					out = append(out, &KeyError{Path: p, Line: k.Line, Problem: Duplicate,
						Detail: fmt.Sprintf("first at line %d", line)})
					continue
				}
				first[k.Value] = k.Line
				walk(n.Content[i+1], p, depth+1)
			}
		}
	}
	walk(doc, "", 0)
	return out
}

func join2(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// locate returns the line of the key at path (as sigs.k8s.io/json writes
// paths: keys joined by ".", indexes in brackets), or of the element for
// a path ending in an index; 0 when not found. Keys with a "." in them are
// matched whole, the longest first.
func locate(doc *yamlv3.Node, path string) int {
	n, line := doc, 0
	for depth := 0; n != nil && depth < maxDepth; depth++ {
		switch n.Kind {
		case yamlv3.DocumentNode:
			if len(n.Content) == 0 {
				return line
			}
			n = n.Content[0]
			continue
		case yamlv3.AliasNode:
			n = n.Alias
			continue
		}
		if path == "" {
			if line == 0 {
				line = n.Line
			}
			return line
		}
		var next *yamlv3.Node
		switch n.Kind {
		case yamlv3.MappingNode:
			next, line, path = mappingStep(n, path)
		case yamlv3.SequenceNode:
			next, line, path = sequenceStep(n, path)
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

// mappingStep finds the key of m that path starts with: the value, the
// key's line and the rest of the path.
func mappingStep(m *yamlv3.Node, path string) (*yamlv3.Node, int, string) {
	best, bestName := -1, ""
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := m.Content[i]
		for _, name := range []string{k.Value, keyName(k)} {
			if !strings.HasPrefix(path, name) || (len(path) > len(name) && path[len(name)] != '.' && path[len(name)] != '[') {
				continue
			}
			if best < 0 || len(name) > len(bestName) {
				best, bestName = i, name
			}
		}
	}
	if best < 0 {
		return mergedStep(m, path)
	}
	rest := strings.TrimPrefix(path[len(bestName):], ".")
	return m.Content[best+1], m.Content[best].Line, rest
}

// mergedStep is mappingStep over the mappings merged into m (`<<: *x`).
func mergedStep(m *yamlv3.Node, path string) (*yamlv3.Node, int, string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Tag != "!!merge" {
			continue
		}
		srcs := []*yamlv3.Node{m.Content[i+1]}
		if v := resolve(srcs[0]); v != nil && v.Kind == yamlv3.SequenceNode {
			srcs = v.Content
		}
		for _, src := range srcs {
			if src = resolve(src); src == nil || src.Kind != yamlv3.MappingNode || src == m {
				continue
			}
			if next, line, rest := mappingStep(src, path); next != nil {
				return next, line, rest
			}
		}
	}
	return nil, 0, path
}

// resolve follows aliases, a bounded number of times.
func resolve(n *yamlv3.Node) *yamlv3.Node {
	for i := 0; n != nil && n.Kind == yamlv3.AliasNode; i++ {
		if i == 100 {
			return nil
		}
		n = n.Alias
	}
	return n
}

// keyName is the JSON name of a plain mapping key, if YAML 1.1 (yaml.v2, which
// sigs.k8s.io/yaml converts with) reads some plain keys as other types
// (`Y:` is true, `0x10:` is 16), which then become their JSON text.
func keyName(k *yamlv3.Node) string {
	if k.Kind != yamlv3.ScalarNode || k.Style&(yamlv3.DoubleQuotedStyle|yamlv3.SingleQuotedStyle) != 0 {
		return k.Value
	}
	js, err := yaml.YAMLToJSON([]byte(k.Value + ": 0"))
	if err != nil {
		return k.Value
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil || len(m) != 1 {
		return k.Value
	}
	for name := range m {
		return name
	}
	return k.Value
}

// sequenceStep follows the "[i]" path starts with.
func sequenceStep(s *yamlv3.Node, path string) (*yamlv3.Node, int, string) {
	if !strings.HasPrefix(path, "[") {
		return nil, 0, path
	}
	end := strings.IndexByte(path, ']')
	if end < 0 {
		return nil, 0, path
	}
	i, err := strconv.Atoi(path[1:end])
	if err != nil || i < 0 || i >= len(s.Content) {
		return nil, 0, path
	}
	e := s.Content[i]
	return e, e.Line, strings.TrimPrefix(path[end+1:], ".")
}
