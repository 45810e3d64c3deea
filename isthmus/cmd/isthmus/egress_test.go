package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"isthmus.dev/egress"
)

func TestEgressCommands(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "egress.yaml")
	sock := filepath.Join(dir, "konnectivity-server.sock")
	report := mustRun(t, "egress", "render", "--out", out, "--uds-name", sock)
	for _, want := range []string{
		"--egress-selector-config-file=" + out,
		"--api-audiences=" + egress.DefaultServiceAccountIssuer + "," + egress.DefaultAgentAudience,
		"--mode=grpc", "--uds-name=" + sock,
	} {
		if !strings.Contains(report, want) {
			t.Errorf("render output lacks %q:\n%s", want, report)
		}
	}
	checkAgentAuthAdvice(t, report, egress.DefaultAgentAudience, "kube-system", "konnectivity-agent", DefaultServerKubeconfig)
	if _, err := egress.Load(out); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}
	if _, err := run(t, "egress", "render", "--out", out, "--uds-name", sock); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("render over an existing file: %v", err)
	}
	report = mustRun(t, "egress", "render", "--out", out, "--uds-name", sock, "--mode", "http-connect", "--force",
		"--agent-audience", "aud-x", "--agent-namespace", "ns-x", "--agent-service-account", "sa-x", "--kubeconfig", "/etc/kubernetes/konnectivity-server.conf")
	checkAgentAuthAdvice(t, report, "aud-x", "ns-x", "sa-x", "/etc/kubernetes/konnectivity-server.conf")
	if want := "--api-audiences=" + egress.DefaultServiceAccountIssuer + ",aud-x"; !strings.Contains(report, want) {
		t.Errorf("render output lacks %q:\n%s", want, report)
	}
	if report := mustRun(t, "egress", "validate", "--config", out); !strings.Contains(report, "cluster: HTTPConnect over UDS "+sock) {
		t.Errorf("validate: %s", report)
	}
	// --out - prints the configuration alone, and writes nothing.
	if yaml := mustRun(t, "egress", "render", "--out", "-", "--uds-name", sock); !strings.HasPrefix(yaml, "# kube-apiserver --egress-selector-config-file") ||
		strings.Contains(yaml, "flags") {
		t.Errorf("--out -: %s", yaml)
	}
}

// TestEgressRenderTCP: in TCP mode the client certificate comes from the
// PKI directory; configurations kube-apiserver refuses are usage errors,
// and nothing is written.
func TestEgressRenderTCP(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	mustRun(t, "certs", "ca", "--dir", pki)
	mustRun(t, "certs", "apiserver-client", "--dir", pki)
	tcp := filepath.Join(dir, "tcp.yaml")
	report := mustRun(t, "egress", "render", "--transport", "tcp", "--url", "https://127.0.0.1:8131", "--pki-dir", pki, "--out", tcp)
	checkAgentAuthAdvice(t, report, egress.DefaultAgentAudience, "kube-system", "konnectivity-agent", filepath.Join(pki, "proxy-server.kubeconfig"))
	cfg, err := egress.Load(tcp)
	if err != nil {
		t.Fatal(err)
	}
	tls := cfg.EgressSelections[0].Connection.Transport.TCP.TLSConfig
	if tls.ClientCert != filepath.Join(pki, "apiserver-client.crt") || tls.CABundle != filepath.Join(pki, "ca.crt") {
		t.Errorf("TLS config %+v", tls)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--transport", "tcp", "--mode", "grpc", "--url", "https://127.0.0.1:8131", "--pki-dir", pki}, "only over a Unix socket"},
		{[]string{"--transport", "tcp", "--url", "http://127.0.0.1:8131", "--pki-dir", pki}, "crashes it"},
		{[]string{"--transport", "tcp", "--url", "https://127.0.0.1:8131", "--pki-dir", filepath.Join(dir, "none")}, "no such file"},
		{[]string{"--uds-name", "relative.sock"}, "relative"},
		{[]string{"--transport", "tcp", "--url", "https://127.0.0.1:8131"}, "--ca-bundle (or --pki-dir) is required"},
	} {
		args := append([]string{"egress", "render", "--out", filepath.Join(dir, "x.yaml")}, tc.args...)
		if r := cli(t, args...); r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("isthmus %s: %+v, want a usage error containing %q", strings.Join(args, " "), r, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.yaml")); err == nil {
		t.Error("a refused configuration was written")
	}
	if _, err := run(t, "egress", "validate"); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("validate without --config: %v", err)
	}
}

// checkAgentAuthAdvice: render advises proxy-server's token flags first
// (kubeadm's way), then client certificates as the alternative.
func checkAgentAuthAdvice(t *testing.T, report, audience, ns, sa, kubeconfig string) {
	t.Helper()
	last := -1
	for _, want := range []string{
		"  --agent-namespace=" + ns + "\n",
		"  --agent-service-account=" + sa + "\n",
		"  --authentication-audience=" + audience + "\n",
		"  --kubeconfig=" + kubeconfig + "\n",
		"  --cluster-ca-cert=",
	} {
		i := strings.Index(report, want)
		if i < 0 {
			t.Errorf("render output lacks %q:\n%s", want, report)
			continue
		}
		if i < last {
			t.Errorf("render output has %q out of order (tokens first, then client certificates):\n%s", want, report)
		}
		last = i
	}
	if !strings.Contains(report, "service-account tokens") || !strings.Contains(report, "or by client certificates") {
		t.Errorf("render output does not explain the two ways:\n%s", report)
	}
}
