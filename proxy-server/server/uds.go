package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
)

// Modes of the frontend's Unix socket: only the server's user may connect,
// or, with --uds-group, that group as well (connecting needs write access).
const (
	udsMode      fs.FileMode = 0o600
	udsGroupMode fs.FileMode = 0o660
)

// udsGroupID resolves --uds-group, a group name or a numeric gid.
func udsGroupID(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		if gid < 0 {
			return 0, fmt.Errorf("--uds-group %q: a gid is 0 or more", group)
		}
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("--uds-group %q: %w (give a group name known to this host, or a numeric gid)", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("--uds-group %q: gid %q is not a number", group, g.Gid)
	}
	return gid, nil
}

// listenUnix creates the frontend's socket at c.UDSName.
//
// The socket file never exists with a wider mode than asked: the socket's
// own mode is set to 0600 (fchmod on the unbound socket, in the
// ListenConfig's Control hook) before bind creates the file, and bind
// gives the file that mode (minus the umask). Only then is it handed to
// the group and widened to 0660. The alternatives were worse: the umask
// is per process, so narrowing it around Listen races with every other
// goroutine creating files; binding in a private directory and renaming
// into place needs a second path that may not fit the 108-byte limit of
// socket addresses.
//
// A file at the path that is not a socket is never removed (a mistyped
// --uds-name must not delete a file): the server refuses to start. A
// socket there is replaced with --delete-existing-uds-file (the one a
// server that died left behind), as ANP does.
func listenUnix(c *Config) (net.Listener, error) {
	path := c.UDSName
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("--uds-name %s exists and is not a socket (%s): refusing to remove it; move it away or choose another --uds-name", path, fileKind(fi))
		}
		if !c.DeleteUDSFile {
			return nil, fmt.Errorf("--uds-name %s: a socket exists there and --delete-existing-uds-file=false keeps it: stop the server that owns it, or remove it", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove the old socket %s (--delete-existing-uds-file): %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--uds-name %s: %w", path, err)
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) { err = syscall.Fchmod(int(fd), uint32(udsMode)) }); cerr != nil {
			return cerr
		}
		if err != nil {
			return fmt.Errorf("set the socket's mode before bind: %w", err)
		}
		return nil
	}}
	ln, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on --uds-name %s: %w", path, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // Close removes the file only while it is ours
	if err := shareWithGroup(path, c.UDSGroup); err != nil {
		_ = ul.Close()
		_ = os.Remove(path)
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		_ = ul.Close()
		return nil, fmt.Errorf("--uds-name %s: %w", path, err)
	}
	return &unixSocket{UnixListener: ul, path: path, file: fi}, nil
}

// shareWithGroup gives the socket to group and widens it to 0660; group
// "" leaves it 0600.
func shareWithGroup(path, group string) error {
	if group == "" {
		return nil
	}
	gid, err := udsGroupID(group)
	if err != nil {
		return err
	}
	// The group first, then the mode: never 0660 for the wrong group.
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("--uds-group %s: give the socket to gid %d (the server must run as root or be a member of that group): %w", group, gid, err)
	}
	if err := os.Chmod(path, udsGroupMode); err != nil {
		return fmt.Errorf("--uds-group %s: chmod %o %s: %w", group, udsGroupMode, path, err)
	}
	return nil
}

func fileKind(fi fs.FileInfo) string {
	switch t := fi.Mode().Type(); {
	case t == 0:
		return "a regular file"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "mode " + fi.Mode().String()
	}
}

// unixSocket is the frontend's listener. Close removes the socket file
// only if it is still the one this server created: not a socket another
// server put there since (with --delete-existing-uds-file), nor a file
// someone else did.
type unixSocket struct {
	*net.UnixListener
	path string
	file fs.FileInfo
	once sync.Once
}

func (u *unixSocket) Close() error {
	err := u.UnixListener.Close()
	u.once.Do(func() {
		if fi, serr := os.Lstat(u.path); serr == nil && os.SameFile(fi, u.file) {
			_ = os.Remove(u.path)
		}
	})
	return err
}
