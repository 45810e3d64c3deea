package configfile_test

import (
	"encoding/json"
	"errors"
	"testing"

	yamlv3 "go.yaml.in/yaml/v3"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"isthmus.dev/certs/configfile"
)

// FuzzDecode: Decode never panics; what Kubernetes' own strict decoding
// accepts (sigs.k8s.io/yaml's YAMLToJSONStrict, then sigs.k8s.io/json's
// UnmarshalStrict), Decode accepts too, with the same value; what Decode
// accepts re-encodes as JSON to something it accepts, with the same value;
// and every refused key has its line.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"", "---\n", "provider: calico\npodCIDR: 10.244.0.0/16\n",
		"apiVersion: v1\nkind: Sample\ncalico: {mode: vxlan, mtu: 1400}\nusers:\n- name: a\n  token: t\n",
		"envVars:\n  NUMBER: 1\n  BOOL: true\n  FLOAT: 1.5e3\n", "data: aGk=\nenabled: true\n",
		"any: {a: [1, 2.5, x, null]}\n", `{"provider": "a", "calico": {"mtu": 1}}`,
		"PROVIDER: calico\n", "podcidr: x\n", "provider: a\nprovider: b\n", "calico:\n  mtu: big\n  mdoe: x\n",
		"spec:\n  network:\n    provider: calico\n", "a: &x {b: 1}\nc: *x\n", "<<: {provider: x}\n",
		"users:\n- name: a\n- {name: b, tokn: c}\n", "provider: a\n---\nb: 1\n", "- a\n", "a.b: 1\n", "1: a\n\"1\": b\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got sample
		err := configfile.Decode(data, &got)
		var k8s sample
		k8sErr := kubernetesStrict(data, &k8s)
		if err != nil {
			checkRefusal(t, data, err)
			if k8sErr == nil && !stricterOnPurpose(err) {
				t.Fatalf("refused %q, which Kubernetes' strict decoding accepts: %v", data, err)
			}
			return
		}
		js := encode(t, got)
		if k8sErr == nil {
			if k8sJS := encode(t, k8s); string(js) != string(k8sJS) {
				t.Fatalf("%q decodes to %s, Kubernetes' strict decoding read %s", data, js, k8sJS)
			}
		}
		var again sample
		if err := configfile.Decode(js, &again); err != nil {
			t.Fatalf("%q decoded, but its JSON %s does not: %v", data, js, err)
		}
		if againJS := encode(t, again); string(js) != string(againJS) {
			t.Fatalf("%q decodes to %s, that JSON to %s", data, js, againJS)
		}
	})
}

// parsesWithLines reports whether yaml.v3, which Decode asks for lines,
// reads data.
func parsesWithLines(data []byte) bool {
	var n yamlv3.Node
	return yamlv3.Unmarshal(data, &n) == nil
}

// stricterOnPurpose reports whether err refuses what Kubernetes lets
// through on purpose: a second document (which it ignores), or a key
// given twice in forms YAML tells apart and JSON does not (`1:` and
// `"1":`, of which Kubernetes keeps one).
func stricterOnPurpose(err error) bool {
	if errors.Is(err, configfile.ErrSecondDocument) {
		return true
	}
	keys := configfile.KeyErrors(err)
	for _, k := range keys {
		if k.Problem != configfile.Duplicate {
			return false
		}
	}
	return len(keys) > 0
}

// kubernetesStrict decodes as k8s.io/apimachinery's serializer does in
// strict mode.
func kubernetesStrict(data []byte, v any) error {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(js, v)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// encode is v as JSON: values equal but for nil and empty lists or maps
// (which omitempty leaves out alike) encode the same.
func encode(t *testing.T, v sample) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkRefusal(t *testing.T, data []byte, err error) {
	t.Helper()
	if err.Error() == "" {
		t.Fatalf("%q: an empty error", data)
	}
	keys := configfile.KeyErrors(err)
	if len(keys) > 0 != errors.Is(err, configfile.ErrStrict) {
		t.Fatalf("%q: %d key errors, errors.Is(ErrStrict) %v", data, len(keys), errors.Is(err, configfile.ErrStrict))
	}
	for _, k := range keys {
		switch k.Problem {
		case configfile.Unknown, configfile.Duplicate:
			if k.Line < 1 && parsesWithLines(data) {
				t.Fatalf("%q: %v: no line", data, k)
			}
		case configfile.WrongType:
		default:
			t.Fatalf("%q: %v: problem %d", data, k, k.Problem)
		}
	}
}
