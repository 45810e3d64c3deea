package harness

import (
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
)

// TokenFile is a service-account token on disk laid out as the kubelet
// lays out a projected volume: Path is a symlink to ..data/token, ..data a
// symlink to a versioned directory. Write swaps ..data in one rename, so a
// reader sees the old token or the new one, never a mix; the path an agent
// opened before holds the old token.
type TokenFile struct {
	Path string // proxy-agent --service-account-token-path
	dir  string
	seq  atomic.Int32
}

// NewTokenFile makes the volume directory (removed at cleanup) and writes
// token into it.
func NewTokenFile(t testing.TB, token string) *TokenFile {
	t.Helper()
	f := &TokenFile{dir: t.TempDir()}
	f.Path = filepath.Join(f.dir, "token")
	f.Write(t, token)
	if err := os.Symlink(filepath.Join("..data", "token"), f.Path); err != nil {
		t.Fatal(err)
	}
	return f
}

// Write replaces the token, as the kubelet does when it rotates it. A
// token of 16 bytes or more is registered as a secret (secrets.go); a
// shorter one is a test's deliberate nonsense.
func (f *TokenFile) Write(t testing.TB, token string) {
	t.Helper()
	if len(token) >= minSecret {
		RegisterSecret(t, "the token in "+f.dir, token)
	}
	version := "..v" + strconv.Itoa(int(f.seq.Add(1)))
	if err := os.Mkdir(filepath.Join(f.dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, version, "token"), []byte(token), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(f.dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(f.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}
