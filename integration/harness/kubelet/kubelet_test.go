package kubelet

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"NODE_NAME": "n1", "HOST_IP": "10.0.0.5"}
	for in, want := range map[string]string{
		"host=$(NODE_NAME)&ipv4=$(HOST_IP)": "host=n1&ipv4=10.0.0.5",
		"$(UNDEFINED)/x":                    "$(UNDEFINED)/x",
		"$$(NODE_NAME)":                     "$(NODE_NAME)",
		"cost $5":                           "cost $5",
		"open $(NODE_NAME":                  "open $(NODE_NAME",
		"$":                                 "$",
	} {
		if got := Expand(in, env); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

// A container sees its volumes at their mount paths, its fieldRef
// environment, and its arguments expanded; the mount points it needed are
// gone from the host afterwards.
func TestStartMountsVolumesAndExpands(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mount namespaces need root")
	}
	secret := t.TempDir()
	if err := os.WriteFile(filepath.Join(secret, "token"), []byte("tok-123"), 0o600); err != nil {
		t.Fatal(err)
	}
	mountPath := filepath.Join("/run", "isthmus-kubelet-test", "tokens")
	pod := &corev1.PodSpec{
		Containers: []corev1.Container{{
			Name:    "c",
			Command: []string{"/check"},
			Args:    []string{"-c", "cat " + mountPath + "/token; echo \" node=$NODE_NAME arg=$(NODE_NAME)\""},
			Env: []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
				FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
			VolumeMounts: []corev1.VolumeMount{{Name: "tokens", MountPath: mountPath, ReadOnly: true}},
		}},
		Volumes: []corev1.Volume{{Name: "tokens"}},
	}
	t.Run("run", func(t *testing.T) {
		p := Start(t, Container{Pod: pod, Name: "c", Binaries: map[string]string{"/check": "/bin/sh"},
			Fields: map[string]string{"spec.nodeName": "node-7"}, Volumes: map[string]string{"tokens": secret}})
		if err := p.Wait(30 * time.Second); err != nil {
			t.Fatalf("%v\n%s", err, p.Output())
		}
		if out := strings.TrimSpace(p.Output()); out != "tok-123 node=node-7 arg=node-7" {
			t.Fatalf("output %q", out)
		}
	})
	if _, err := os.Stat(filepath.Dir(mountPath)); !os.IsNotExist(err) {
		t.Fatalf("the mount point %s was left on the host: %v", filepath.Dir(mountPath), err)
	}
}
