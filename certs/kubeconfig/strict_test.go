package kubeconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"isthmus.dev/certs/configfile"
)

// A kubeconfig as kubectl writes it loads; one with a key client-go would
// silently ignore (wrong case, misspelt, given twice) is refused with the
// key and its line, before any of its certificates are read.
func TestLoadStrict(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const good = `apiVersion: v1
kind: Config
preferences: {}
clusters:
- name: kubernetes
  cluster:
    server: https://10.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: not-a-secret
contexts:
- name: admin@kubernetes
  context: {cluster: kubernetes, user: admin}
current-context: admin@kubernetes
`
	cfg, err := LoadStrict(write("good", good))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CurrentContext != "admin@kubernetes" || cfg.Clusters["kubernetes"].Server != "https://10.0.0.1:6443" {
		t.Fatalf("loaded %+v", cfg)
	}
	for _, tc := range []struct{ name, from, to, want string }{
		{"case", "clusters:", "Clusters:", `line 4: unknown key "Clusters": keys are case-sensitive: did you mean "clusters"?`},
		{"typo", "insecure-skip-tls-verify", "insecure-skip-tls-verfy",
			`line 8: unknown key "clusters[0].cluster.insecure-skip-tls-verfy": did you mean "insecure-skip-tls-verify"?`},
		{"duplicate", "current-context: admin@kubernetes\n", "current-context: admin@kubernetes\ncurrent-context: other\n",
			`line 17: duplicate key "current-context": first at line 16`},
	} {
		p := write(tc.name, strings.Replace(good, tc.from, tc.to, 1))
		_, err := LoadStrict(p)
		if err == nil || err.Error() != "kubeconfig "+p+": "+tc.want {
			t.Errorf("%s: %v\nwant: %s", tc.name, err, tc.want)
		}
		if !errors.Is(err, configfile.ErrStrict) {
			t.Errorf("%s: not a strict decoding error: %v", tc.name, err)
		}
		if _, err := Certificates(p); !errors.Is(err, configfile.ErrStrict) {
			t.Errorf("%s: Certificates: %v", tc.name, err)
		}
	}
}
