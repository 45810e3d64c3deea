// Package configfile decodes the configuration files isthmus reads (a
// network config, an egress configuration, a kubeconfig; YAML or JSON)
// strictly, the way Kubernetes decodes its own objects in strict mode
// (sigs.k8s.io/yaml's YAMLToJSONStrict, then sigs.k8s.io/json's
// UnmarshalStrict): keys are case-sensitive, and an unknown or a duplicate
// key is an error. Each refused key is a *KeyError naming the key's path,
// its line, and, for a key that differs from a known one only in case or
// by a typo, the key meant.
//
// One leniency is kept from sigs.k8s.io/yaml's Unmarshal (and so from
// k0s, whose configs share this shape): a number or a boolean where a
// string is wanted is taken as its text (`mtu: 1400` in a map of strings).
package configfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// ErrStrict is matched (errors.Is) by every *KeyError.
var ErrStrict = errors.New("strict decoding")

// ErrSecondDocument is matched by the error for a file of more than one
// YAML document: the decoders would read the first and ignore the rest.
var ErrSecondDocument = errors.New("a second YAML document")

// Problem is what is wrong with a key.
type Problem int

// The problems.
const (
	// Unknown: no field of that name (case-sensitive) where the key is.
	Unknown Problem = iota + 1
	// Duplicate: the key appears twice in one mapping.
	Duplicate
	// WrongType: the key's value cannot be decoded into its field.
	WrongType
)

// KeyError is one refused key.
type KeyError struct {
	// Path is the key's path as Kubernetes writes it: "calico.mtu",
	// "users[0].user.token"; "" for the document itself.
	Path string
	// Line is the key's 1-based line in the file; 0 when not found.
	Line    int
	Problem Problem
	// Detail says more: the first line of a duplicate, or the types of a
	// wrong value.
	Detail string
	// Hint says what to do instead, e.g. the key meant; "" when none.
	Hint string
}

// Key is the last element of Path.
func (e *KeyError) Key() string {
	p := e.Path
	if i := strings.LastIndexAny(p, ".]"); i >= 0 && p[i] == '.' {
		return p[i+1:]
	}
	return p
}

func (e *KeyError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	switch e.Problem {
	case Unknown:
		fmt.Fprintf(&b, "unknown key %q", e.Path)
	case Duplicate:
		fmt.Fprintf(&b, "duplicate key %q", e.Path)
	default:
		if e.Path == "" {
			b.WriteString("the document")
		} else {
			fmt.Fprintf(&b, "key %q", e.Path)
		}
	}
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	if e.Hint != "" {
		b.WriteString(": " + e.Hint)
	}
	return b.String()
}

// Is makes every KeyError match ErrStrict.
func (e *KeyError) Is(target error) bool { return target == ErrStrict }

// KeyErrors returns every *KeyError in err (joined errors included), in
// order.
func KeyErrors(err error) []*KeyError {
	var out []*KeyError
	var walk func(error)
	walk = func(err error) {
		if ke, ok := err.(*KeyError); ok {
			out = append(out, ke)
			return
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			if e := u.Unwrap(); e != nil {
				walk(e)
			}
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

// Decode decodes data, one YAML (or JSON) document, into v, a non-nil
// pointer, strictly. It returns every refused key, each a *KeyError, joined
// and in line order; or an error saying why data is not YAML. On error, v
// may be partly filled. An empty document leaves v as it is.
func Decode(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("configfile: decode into %T: want a non-nil pointer", v)
	}
	// The nodes give lines and duplicates. The YAML that counts is what
	// sigs.k8s.io/yaml reads (YAML 1.1, yaml.v2): where only yaml.v3
	// fails, the errors go without lines.
	doc, parseErr := parse(data)
	if errors.Is(parseErr, ErrSecondDocument) {
		return parseErr
	}
	if dups := duplicates(doc); len(dups) > 0 {
		return join(dups)
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		if parseErr != nil {
			return parseErr
		}
		return fmt.Errorf("not valid YAML: %w", err)
	}
	tree, err := coerceJSON(js, rv.Type().Elem())
	if err != nil {
		return err
	}
	errs, err := decodeTree(doc, tree, v)
	if err != nil {
		return err
	}
	return join(errs)
}

// maxTypeErrors bounds the values decodeTree takes out to find more.
const maxTypeErrors = 20

// decodeTree decodes tree into v with sigs.k8s.io/json, strictly. A value
// of the wrong type hides every other problem there (the decoder stops
// reporting), so each one found is noted and taken out (made null), and
// the tree decoded again: every problem is reported at once.
func decodeTree(doc *yamlv3.Node, tree any, v any) ([]*KeyError, error) {
	t := reflect.TypeOf(v).Elem()
	var errs []*KeyError
	for range maxTypeErrors + 1 {
		js, err := json.Marshal(tree)
		if err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		strictErrs, err := kjson.UnmarshalStrict(js, v)
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			errs = append(errs, typeError(doc, te))
			if te.Field == "" || len(errs) == maxTypeErrors || !setNull(tree, segments(te.Field)) {
				return errs, nil
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("decode: %w", err)
		}
		for _, se := range strictErrs {
			var fe kjson.FieldError
			if !errors.As(se, &fe) {
				return nil, fmt.Errorf("decode: %w", se)
			}
			errs = append(errs, keyError(doc, t, fe.FieldPath()))
		}
		return errs, nil
	}
	return errs, nil
}

// parse reads data as YAML nodes, for lines and duplicates; nil for an
// empty document. A second document is an error: it would be ignored.
func parse(data []byte) (*yamlv3.Node, error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	var doc yamlv3.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	// What follows the first document and does not parse is left to
	// sigs.k8s.io/yaml (which ignores it): only a second document is
	// refused here.
	var next yamlv3.Node
	if err := dec.Decode(&next); err == nil && !isEmpty(&next) {
		return nil, fmt.Errorf("line %d: %w (after ---): the file holds one; remove the --- line or what follows it", next.Line, ErrSecondDocument)
	}
	return &doc, nil
}

// isEmpty reports whether a document node holds nothing (a lone "---").
func isEmpty(doc *yamlv3.Node) bool {
	if len(doc.Content) == 0 {
		return true
	}
	n := doc.Content[0]
	return n.Kind == yamlv3.ScalarNode && n.ShortTag() == "!!null" && n.Value == ""
}

// keyError describes the strict error at path: a key where its parent
// type has no such field is unknown; any other (a key given twice in the
// JSON the YAML became) is a duplicate.
func keyError(doc *yamlv3.Node, t reflect.Type, path string) *KeyError {
	e := &KeyError{Path: path, Line: locate(doc, path), Problem: Duplicate}
	segs := segments(path)
	if len(segs) == 0 {
		return e
	}
	if _, known := typeAt(t, segs); !known {
		e.Problem = Unknown
		if parent, ok := typeAt(t, segs[:len(segs)-1]); ok {
			e.Hint = suggest(parent, segs[len(segs)-1])
		}
	}
	return e
}

func typeError(doc *yamlv3.Node, te *json.UnmarshalTypeError) *KeyError {
	want := "a mapping of keys"
	if te.Type != nil {
		want = describe(te.Type)
	}
	value, _, _ := strings.Cut(te.Value, " ")
	return &KeyError{Path: te.Field, Line: locate(doc, te.Field), Problem: WrongType,
		Detail: fmt.Sprintf("got %s, want %s", article(value), want)}
}

func join(errs []*KeyError) error {
	if len(errs) == 0 {
		return nil
	}
	slices.SortStableFunc(errs, func(a, b *KeyError) int { return a.Line - b.Line })
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}
