package configfile_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"isthmus.dev/certs/configfile"
)

// sample has the shapes the config files have: nested blocks, pointers,
// lists of strings and of blocks, maps of strings, an inline (embedded)
// block, and a value that decodes itself.
type sample struct {
	Header   `json:",inline"`
	Provider string            `json:"provider,omitempty"`
	PodCIDR  string            `json:"podCIDR,omitempty"`
	Archs    []string          `json:"architectures,omitempty"`
	Calico   *block            `json:"calico,omitempty"`
	Users    []user            `json:"users,omitempty"`
	Env      map[string]string `json:"envVars,omitempty"`
	Data     []byte            `json:"data,omitempty"`
	Enabled  bool              `json:"enabled,omitempty"`
	Any      any               `json:"any,omitempty"`
	Skipped  string            `json:"-"`
}

// Header is embedded inline, as Kubernetes' TypeMeta is.
type Header struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

type block struct {
	Mode string `json:"mode,omitempty"`
	MTU  int    `json:"mtu,omitempty"`
}

type user struct {
	Name  string `json:"name"`
	Token string `json:"token,omitempty"`
}

func TestDecodeRefusesWithKeyAndLine(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string // one line per error, in order
	}{
		{"case of a key", "PROVIDER: calico\n", []string{
			`line 1: unknown key "PROVIDER": keys are case-sensitive: did you mean "provider"?`}},
		{"case inside", "podcidr: 10.0.0.0/8\n", []string{
			`line 1: unknown key "podcidr": keys are case-sensitive: did you mean "podCIDR"?`}},
		{"typo", "provider: x\ncalico:\n  mdoe: vxlan\n", []string{
			`line 3: unknown key "calico.mdoe": did you mean "mode"?`}},
		{"unknown, no hint", "spec:\n  network:\n    provider: calico\n", []string{`line 1: unknown key "spec"`}},
		{"in a list", "users:\n- name: a\n- name: b\n  tokn: x\n", []string{
			`line 4: unknown key "users[1].tokn": did you mean "token"?`}},
		{"duplicate", "provider: a\npodCIDR: x\nprovider: b\n", []string{
			`line 3: duplicate key "provider": first at line 1`}},
		{"duplicate in a map", "envVars:\n  A: x\n  A: y\n", []string{
			`line 3: duplicate key "envVars.A": first at line 2`}},
		{"duplicate once JSON", "envVars:\n  1: x\n  \"1\": y\n", []string{
			`line 3: duplicate key "envVars.1": first at line 2`}},
		{"duplicate in JSON", `{"provider": "a", "provider": "b"}`, []string{
			`line 1: duplicate key "provider": first at line 1`}},
		{"wrong type", "calico:\n  mtu: big\n", []string{
			`line 2: key "calico.mtu": got a string, want a whole number`}},
		{"not a mapping", "- a\n- b\n", []string{
			`line 1: the document: got a list, want a mapping of keys`}},
		{"every problem at once", "calico:\n  mtu: big\n  mdoe: x\nenabled: maybe\nKind: X\n", []string{
			`line 2: key "calico.mtu": got a string, want a whole number`,
			`line 3: unknown key "calico.mdoe": did you mean "mode"?`,
			`line 4: key "enabled": got a string, want true or false`,
			`line 5: unknown key "Kind": keys are case-sensitive: did you mean "kind"?`}},
		{"skipped field", "Skipped: x\n", []string{`line 1: unknown key "Skipped"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s sample
			err := configfile.Decode([]byte(tc.in), &s)
			if err == nil {
				t.Fatalf("accepted %q", tc.in)
			}
			if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("errors:\n%s\nwant:\n%s", err, strings.Join(tc.want, "\n"))
			}
			if !errors.Is(err, configfile.ErrStrict) {
				t.Errorf("%v does not match ErrStrict", err)
			}
			if n := len(configfile.KeyErrors(err)); n != len(tc.want) {
				t.Errorf("KeyErrors: %d, want %d", n, len(tc.want))
			}
		})
	}
}

func TestDecodeRefusesWhatIsNotOneDocument(t *testing.T) {
	for in, want := range map[string]string{
		"provider: a\n---\nprovider: b\n": "line 2: a second YAML document",
		"provider: [\n":                   "not valid YAML",
		"provider: a\n\tpodCIDR: b\n":     "not valid YAML",
	} {
		var s sample
		err := configfile.Decode([]byte(in), &s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
	if err := configfile.Decode([]byte("a: 1"), sample{}); err == nil {
		t.Error("decoding into a non-pointer: no error")
	}
}

func TestDecodeAccepts(t *testing.T) {
	in := `apiVersion: v1
kind: Sample
provider: calico
architectures: [amd64, arm]
calico: {mode: vxlan, mtu: 1400}
users:
- name: a
  token: t
envVars:
  NUMBER: 1
  BOOL: true
  TEXT: "x"
data: aGk=
enabled: true
any: {whatever: [1, 2]}
---
`
	want := sample{
		Header:   Header{APIVersion: "v1", Kind: "Sample"},
		Provider: "calico", Archs: []string{"amd64", "arm"},
		Calico: &block{Mode: "vxlan", MTU: 1400},
		Users:  []user{{Name: "a", Token: "t"}},
		// A number or boolean where a string is wanted is its text, as
		// sigs.k8s.io/yaml's Unmarshal (and k0s) take it.
		Env:     map[string]string{"NUMBER": "1", "BOOL": "true", "TEXT": "x"},
		Data:    []byte("hi"),
		Enabled: true,
		Any:     map[string]any{"whatever": []any{int64(1), int64(2)}},
	}
	var got sample
	if err := configfile.Decode([]byte(in), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	// JSON is YAML; an empty file leaves the value as it is.
	got = sample{Provider: "kept"}
	if err := configfile.Decode([]byte(`{"podCIDR": "10.0.0.0/8"}`), &got); err != nil || got.Provider != "kept" || got.PodCIDR != "10.0.0.0/8" {
		t.Fatalf("JSON: %+v, %v", got, err)
	}
	for _, empty := range []string{"", "\n# nothing\n", "---\n", "null\n"} {
		got = sample{Provider: "kept"}
		if err := configfile.Decode([]byte(empty), &got); err != nil || got.Provider != "kept" {
			t.Errorf("%q: %+v, %v", empty, got, err)
		}
	}
}
