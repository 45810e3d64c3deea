package configfile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[interface{ UnmarshalText([]byte) error }]()
)

// opaque reports whether values of t decode themselves (or into anything),
// so that no key inside them can be known here.
func opaque(t reflect.Type) bool {
	if t.Kind() == reflect.Interface {
		return true
	}
	p := reflect.PointerTo(t)
	return p.Implements(jsonUnmarshaler) || p.Implements(textUnmarshaler)
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// jsonFields returns the fields of struct type t by their JSON names, as
// encoding/json finds them: the tag's name or the Go name, "-" skipped,
// the fields of an embedded struct without a name promoted (a shallower
// field wins).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	var embedded []reflect.Type
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && deref(f.Type).Kind() == reflect.Struct {
			embedded = append(embedded, deref(f.Type))
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	for _, e := range embedded {
		for name, ft := range jsonFields(e) {
			if _, shadowed := out[name]; !shadowed {
				out[name] = ft
			}
		}
	}
	return out
}

// segments splits a sigs.k8s.io/json path into keys and "[i]" indexes:
// a key (maybe empty), then ".key" or "[i]" any number of times.
func segments(path string) []string {
	var out []string
	key := func() {
		end := strings.IndexAny(path, ".[")
		if end < 0 {
			end = len(path)
		}
		out = append(out, path[:end])
		path = path[end:]
	}
	if !strings.HasPrefix(path, "[") {
		key()
	}
	for path != "" {
		if path[0] == '.' {
			path = path[1:]
			key()
			continue
		}
		end := strings.IndexByte(path, ']')
		if end < 0 {
			return append(out, path)
		}
		out = append(out, path[:end+1])
		path = path[end+1:]
	}
	return out
}

// typeAt follows segs from t; ok is false when a key names no field of a
// struct. Inside an opaque type everything is known (it decides).
func typeAt(t reflect.Type, segs []string) (reflect.Type, bool) {
	for _, s := range segs {
		t = deref(t)
		if opaque(t) {
			return t, true
		}
		switch t.Kind() {
		case reflect.Struct:
			ft, ok := jsonFields(t)[s]
			if !ok {
				return nil, false
			}
			t = ft
		case reflect.Map, reflect.Slice, reflect.Array:
			t = t.Elem()
		default:
			return t, true
		}
	}
	return deref(t), true
}

// suggest names the key of struct type t that key was likely meant to be:
// the same but for case, or one or two typos away.
func suggest(t reflect.Type, key string) string {
	if t == nil || t.Kind() != reflect.Struct || opaque(t) {
		return ""
	}
	best, bestDist := "", 3
	for name := range jsonFields(t) {
		if strings.EqualFold(name, key) {
			return fmt.Sprintf("keys are case-sensitive: did you mean %q?", name)
		}
		if len(key) >= 4 {
			if d := distance(strings.ToLower(name), strings.ToLower(key)); d < bestDist || (d == bestDist && name < best) {
				best, bestDist = name, d
			}
		}
	}
	if best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return ""
}

// distance is the Levenshtein distance of a and b, given up beyond 3.
func distance(a, b string) int {
	if d := len(a) - len(b); d > 3 || d < -3 {
		return 4
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// describe names what a value of t looks like in a file.
func describe(t reflect.Type) string {
	switch deref(t).Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		if deref(t).Elem().Kind() == reflect.Uint8 {
			return "base64 text"
		}
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping of keys"
	}
	return t.String()
}

// article names a JSON value kind as encoding/json's UnmarshalTypeError
// gives it ("string", "number", "bool", "array", "object").
func article(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "number":
		return "a number"
	case "bool":
		return "true or false"
	case "array":
		return "a list"
	case "object":
		return "a mapping of keys"
	case "null":
		return "nothing (null)"
	}
	return kind
}

// coerceJSON decodes js into a tree of maps, lists and values, and turns
// each number or boolean where t wants a string into its text, as
// sigs.k8s.io/yaml's Unmarshal does.
func coerceJSON(js []byte, t reflect.Type) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	tree, _ = coerce(tree, t, 0)
	return tree, nil
}

// setNull replaces the value at segs in tree (maps and lists, changed in
// place) with null; false when there is no such value, or it is null.
func setNull(tree any, segs []string) bool {
	cur := tree
	for i, s := range segs {
		last := i == len(segs)-1
		switch v := cur.(type) {
		case map[string]any:
			e, ok := v[s]
			if !ok {
				return false
			}
			if last {
				v[s] = nil
				return e != nil
			}
			cur = e
		case []any:
			j, err := strconv.Atoi(strings.Trim(s, "[]"))
			if err != nil || j < 0 || j >= len(v) {
				return false
			}
			if last {
				e := v[j]
				v[j] = nil
				return e != nil
			}
			cur = v[j]
		default:
			return false
		}
	}
	return false
}

func coerce(x any, t reflect.Type, depth int) (any, bool) {
	t = deref(t)
	if depth > maxDepth || opaque(t) {
		return x, false
	}
	changed := false
	set := func(e any, et reflect.Type) any {
		v, c := coerce(e, et, depth+1)
		changed = changed || c
		return v
	}
	switch v := x.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Struct:
			fields := jsonFields(t)
			for k, e := range v {
				if ft, ok := fields[k]; ok {
					v[k] = set(e, ft)
				}
			}
		case reflect.Map:
			for k, e := range v {
				v[k] = set(e, t.Elem())
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, e := range v {
				v[i] = set(e, t.Elem())
			}
		}
	case json.Number:
		if t.Kind() == reflect.String {
			return string(v), true
		}
	case bool:
		if t.Kind() == reflect.String {
			return strconv.FormatBool(v), true
		}
	}
	return x, changed
}
