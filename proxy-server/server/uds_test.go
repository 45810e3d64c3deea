package server

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// socketMode is the permission bits, owner and group of the file at path.
func socketMode(t *testing.T, path string) (fs.FileMode, int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("%s is %v, not a socket", path, fi.Mode())
	}
	return fi.Mode().Perm(), int(fi.Sys().(*syscall.Stat_t).Gid)
}

// serveUDS starts a server on cfg and checks its socket answers; stop ends it.
func serveUDS(t *testing.T, cfg Config) (stop func() error) {
	t.Helper()
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop = start(t, s)
	c, err := net.Dial("unix", cfg.UDSName)
	if err != nil {
		t.Fatalf("dial the frontend socket: %v", err)
	}
	c.Close()
	return stop
}

// TestUDSIsOwnerOnly: without --uds-group the socket is 0600, and it is
// gone after the server stops.
func TestUDSIsOwnerOnly(t *testing.T) {
	cfg, _ := testConfig(t)
	stop := serveUDS(t, cfg)
	if mode, _ := socketMode(t, cfg.UDSName); mode != 0o600 {
		t.Errorf("socket mode %o, want 600", mode)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(cfg.UDSName); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after the server stopped: %v", err)
	}
}

// TestUDSGroup: --uds-group, as a gid or a group name, makes the socket
// 0660 and that group's.
func TestUDSGroup(t *testing.T) {
	gid := os.Getgid()
	g, err := user.LookupGroupId(strconv.Itoa(gid))
	if err != nil {
		t.Skipf("the test's group %d has no name here: %v", gid, err)
	}
	for _, group := range []string{strconv.Itoa(gid), g.Name} {
		t.Run(group, func(t *testing.T) {
			cfg, _ := testConfig(t)
			cfg.UDSGroup = group
			serveUDS(t, cfg)
			mode, owner := socketMode(t, cfg.UDSName)
			if mode != 0o660 || owner != gid {
				t.Errorf("socket mode %o group %d, want 660 group %d", mode, owner, gid)
			}
		})
	}
}

func TestUDSGroupRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"unknown group", func(c *Config) { c.UDSGroup = "no-such-group-isthmus" }, `--uds-group "no-such-group-isthmus"`},
		{"negative gid", func(c *Config) { c.UDSGroup = "-5" }, `--uds-group "-5"`},
		{"without a socket", func(c *Config) { c.UDSName, c.ServerPort, c.UDSGroup = "", 8090, "0" }, "--uds-group \"0\" has no use without --uds-name"},
	} {
		c := DefaultConfig()
		c.UDSName, c.ServerPort = "/tmp/x.sock", 0
		c.ClusterCert, c.ClusterKey, c.ClusterCACert = "c", "k", "ca"
		tc.mut(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// TestUDSNeverRemovesANonSocket: a regular file, a directory or a symbolic
// link at --uds-name stays as it was, and the server refuses to start,
// saying why; with --delete-existing-uds-file (the default) too.
func TestUDSNeverRemovesANonSocket(t *testing.T) {
	for _, kind := range []string{"regular file", "directory", "symbolic link"} {
		t.Run(kind, func(t *testing.T) {
			cfg, _ := testConfig(t)
			target := filepath.Join(t.TempDir(), "precious")
			if err := os.WriteFile(target, []byte("keep me"), 0o644); err != nil {
				t.Fatal(err)
			}
			var err error
			switch kind {
			case "regular file":
				err = os.WriteFile(cfg.UDSName, []byte("keep me"), 0o644)
			case "directory":
				err = os.Mkdir(cfg.UDSName, 0o755)
			case "symbolic link":
				err = os.Symlink(target, cfg.UDSName)
			}
			if err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(cfg.UDSName)
			s, err := New(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = s.Run(t.Context())
			if err == nil || !strings.Contains(err.Error(), "is not a socket ("+"a "+kind+")") || !strings.Contains(err.Error(), "--uds-name") {
				t.Fatalf("Run: %v, want a refusal naming --uds-name and the %s", err, kind)
			}
			after, lerr := os.Lstat(cfg.UDSName)
			if lerr != nil || !os.SameFile(before, after) {
				t.Fatalf("the %s at --uds-name was touched: %v", kind, lerr)
			}
			if b, err := os.ReadFile(target); err != nil || string(b) != "keep me" {
				t.Fatalf("the file behind it changed: %q %v", b, err)
			}
		})
	}
}

// staleSocket leaves a socket file at path with nothing listening on it,
// as a server that died does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("the stale socket still answers")
	}
}

// TestUDSReplacesAStaleSocket: a socket left by a dead server is replaced
// (--delete-existing-uds-file, the default) and kept with the flag off.
func TestUDSReplacesAStaleSocket(t *testing.T) {
	cfg, _ := testConfig(t)
	staleSocket(t, cfg.UDSName)
	if err := serveUDS(t, cfg)(); err != nil {
		t.Fatal(err)
	}

	staleSocket(t, cfg.UDSName)
	cfg.DeleteUDSFile = false
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "--delete-existing-uds-file=false") {
		t.Fatalf("Run over a socket with --delete-existing-uds-file=false: %v", err)
	}
	if _, err := os.Lstat(cfg.UDSName); err != nil {
		t.Fatalf("the socket was removed with --delete-existing-uds-file=false: %v", err)
	}
}

// TestUDSStopLeavesAReplacement: a server stopping removes its socket
// only if the file is still its own: not one a newer server bound at the
// same path, nor a file put there since.
func TestUDSStopLeavesAReplacement(t *testing.T) {
	cfg, _ := testConfig(t)
	stopOld := serveUDS(t, cfg)
	newer := cfg
	newer.AgentPort, newer.HealthPort, newer.ServerID = freePort(t), freePort(t), "s2"
	serveUDS(t, newer) // replaces the old server's socket
	if err := stopOld(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", cfg.UDSName)
	if err != nil {
		t.Fatalf("the old server's stop removed the newer server's socket: %v", err)
	}
	c.Close()
}

// TestUDSNeverWiderThanAsked: the socket is never seen with a mode wider
// than its final one, however early it is looked at (a chmod after bind
// would show the umask's 0755 for a moment).
func TestUDSNeverWiderThanAsked(t *testing.T) {
	dir := t.TempDir()
	for i := range 200 {
		cfg := Config{UDSName: filepath.Join(dir, "s"+strconv.Itoa(i)+".sock"), DeleteUDSFile: true}
		var wg sync.WaitGroup
		done := make(chan struct{})
		seen := map[fs.FileMode]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if fi, err := os.Lstat(cfg.UDSName); err == nil {
					seen[fi.Mode().Perm()] = true
				}
				select {
				case <-done:
					return
				default:
				}
			}
		}()
		ln, err := listenUnix(&cfg)
		close(done)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		for m := range seen {
			if m != 0o600 {
				t.Fatalf("socket seen with mode %o during its creation", m)
			}
		}
	}
}
